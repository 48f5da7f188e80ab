"""Training recipes: each seed's training, as small declarative objects.

A :class:`Recipe` names its loss terms and weights, the optimiser, learning rate, weight
decay, schedule, gradient clipping, optional adversarial settings and optional stages.
Every field can be overridden from the CLI (``--loss``, ``--lr``, ...) with
:func:`override`.

Which architecture trains with which recipe is training's business, not the architecture's:
:data:`RECIPES` is keyed by the architecture names of the registry (each arch's own seed
recipe), :func:`recipe_for_arch` checks the name against the registry first, and a test keeps
the keys equal to ``list_archs()``. An adversarial recipe names its discriminator, a registry
entry of its own (``deblurcli.archs.register_discriminator``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from deblurcli.errors import UsageError
from deblurcli.training.losses import check_loss_name

_ALIASES = {"mae": "l1", "l2": "mse", "vgg": "perceptual", "edge": "edge_bce"}
_ALIASES |= {"frequency": "fft", "fft_amplitude": "fft_amp"}
SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adam", "adamw")


@dataclass(frozen=True)
class LossTerm:
    """One weighted term; ``layer`` is the VGG19 layer for perceptual terms (e.g. conv3_3)."""

    name: str
    weight: float = 1.0
    layer: str | None = None


@dataclass(frozen=True)
class Adversarial:
    """Adversarial training against ``critic``, a registered discriminator's name.

    ``kind`` is ``wgan-gp`` (critic scores, gradient penalty ``gp_weight``, ``n_critic``
    critic updates per generator step) or ``gan`` (non-saturating BCE on logits).
    """

    kind: str
    critic: str
    weight: float
    lr: float
    betas: tuple[float, float] = (0.5, 0.999)
    gp_weight: float = 10.0
    n_critic: int = 1


@dataclass(frozen=True)
class Recipe:
    """How one architecture is trained (the defaults of ``deblur train --arch NAME``)."""

    name: str
    losses: tuple[LossTerm, ...]
    optimizer: str = "adam"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = None
    adversarial: Adversarial | None = None
    # Fraction of the steps spent pre-training the edge branch alone (edgenet only).
    edge_pretrain: float = 0.0
    # Loss used in place of the perceptual term when VGG19 weights are missing.
    perceptual_fallback: str | None = None
    notes: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        """The recipe ``dataclasses.asdict`` gave (as saved in a run's ``config.json``).

        Runs saved before recipes named their critic get the named recipe's critic.
        """
        data = dict(data, losses=tuple(LossTerm(**t) for t in data["losses"]))
        data["betas"] = tuple(data["betas"])
        adversarial = data.get("adversarial")
        if adversarial:
            adversarial = dict(adversarial, betas=tuple(adversarial.get("betas", (0.5, 0.999))))
            if "critic" not in adversarial:
                adversarial["critic"] = RECIPES[data["name"]].adversarial.critic
            data["adversarial"] = Adversarial(**adversarial)
        return cls(**data)

    def describe(self) -> str:
        terms = " + ".join(
            f"{t.name}{f'[{t.layer}]' if t.layer else ''}×{t.weight:g}" for t in self.losses
        )
        if self.adversarial:
            terms += f" + {self.adversarial.kind}×{self.adversarial.weight:g}"
        schedule = "" if self.schedule == "constant" else f" {self.schedule}"
        if self.warmup_steps:
            schedule += f" after {self.warmup_steps} warm-up steps"
        text = f"{terms}; {self.optimizer} lr {self.lr:g}{schedule}, wd {self.weight_decay:g}"
        if self.edge_pretrain:
            text += f"; edge branch alone for the first {self.edge_pretrain:.0%} of the steps"
        return text


RECIPES: dict[str, Recipe] = {
    "simplecnn": Recipe(
        name="simplecnn",
        losses=(LossTerm("mse", 1.0), LossTerm("perceptual", 0.1, "conv4_4")),
        lr=1e-4,
        weight_decay=1e-5,
        grad_clip=1.0,
        notes="seed 004: MSE + 0.1 VGG19 perceptual (conv4_4), clip 1.0, Adam 1e-4, wd 1e-5",
    ),
    "deblurgan": Recipe(
        name="deblurgan",
        # DeblurGAN: L = L_GAN + 100 · L_X with L_X the VGG19 conv3_3 feature distance.
        losses=(LossTerm("perceptual", 100.0, "conv3_3"),),
        lr=1e-4,
        betas=(0.5, 0.999),
        schedule="linear",
        adversarial=Adversarial(
            kind="wgan-gp", critic="patchgan", weight=1.0, lr=1e-4, gp_weight=10.0, n_critic=5
        ),
        perceptual_fallback="l1",
        notes="seed 002: VGG19 conv3_3 content (L1 if no weights) ×100 + WGAN-GP λ=10, n_critic=5",
    ),
    "skipae": Recipe(
        name="skipae",
        losses=(LossTerm("mse", 1.0),),
        lr=1e-4,
        betas=(0.5, 0.999),
        adversarial=Adversarial(kind="gan", critic="dcgan", weight=1e-3, lr=1e-4),
        notes="seed 000: MSE reconstruction + 1e-3 adversarial loss from its discriminator",
    ),
    "edgenet": Recipe(
        name="edgenet",
        losses=(LossTerm("l1", 1.0), LossTerm("edge_bce", 0.1)),
        lr=1e-4,
        edge_pretrain=0.2,
        notes="seed 001: EdgeNet on Canny edges (class-balanced BCE), then joint with L1",
    ),
    "resnetencdec": Recipe(
        name="resnetencdec",
        losses=(LossTerm("mse", 1.0),),
        lr=1e-3,
        notes="seed 003: MSE (or --loss mae), Adam 1e-3",
    ),
    "transformnet": Recipe(
        name="transformnet",
        losses=(LossTerm("mse", 1.0),),
        lr=1e-3,
        notes="seed 003: MSE (or --loss mae), Adam 1e-3",
    ),
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"no training recipe {name!r}; known: {', '.join(RECIPES)}") from None


def recipe_for_arch(arch: str) -> Recipe:
    """The recipe ``arch`` trains with by default (an unknown arch is a one-line error)."""
    from deblurcli.archs import get_spec

    get_spec(arch)  # the registry decides which names are architectures
    try:
        return RECIPES[arch]
    except KeyError:
        raise UsageError(f"{arch} has no training recipe yet") from None


def parse_losses(text: str) -> tuple[LossTerm, ...]:
    """Parse ``--loss``: ``mae``, ``mse:1,perceptual@conv4_4:0.1``, ``charbonnier,fft:0.05``,
    ``none`` (adversarial only)."""
    if text.strip().lower() == "none":
        return ()
    terms = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition(":")
        name, _, layer = name.partition("@")
        name = check_loss_name(_ALIASES.get(name.lower(), name.lower()))
        try:
            w = float(weight) if weight else 1.0
        except ValueError:
            raise UsageError(
                f"weight of {name} is not a number: {weight!r}", option="loss"
            ) from None
        default_layer = "conv4_4" if name == "perceptual" else None
        terms.append(LossTerm(name, w, layer or default_layer))
    if not terms:
        raise UsageError("is empty", option="loss")
    return tuple(terms)


def override(
    recipe: Recipe,
    *,
    loss: str | None = None,
    lr: float | None = None,
    weight_decay: float | None = None,
    schedule: str | None = None,
    warmup: int | None = None,
    grad_clip: float | None = None,
    adversarial: bool | None = None,
    n_critic: int | None = None,
) -> Recipe:
    """``recipe`` with the given fields replaced (None keeps the recipe's value)."""
    changes: dict[str, object] = {}
    if loss is not None:
        changes["losses"] = parse_losses(loss)
    if lr is not None:
        if lr <= 0:
            raise UsageError("must be positive", option="lr")
        changes["lr"] = lr
    if weight_decay is not None:
        changes["weight_decay"] = weight_decay
    if schedule is not None:
        if schedule not in SCHEDULES:
            raise UsageError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
        changes["schedule"] = schedule
    if warmup is not None:
        if warmup < 0:
            raise UsageError("must be 0 or more steps", option="warmup")
        changes["warmup_steps"] = warmup
    if grad_clip is not None:
        changes["grad_clip"] = grad_clip if grad_clip > 0 else None
    if adversarial is False:
        changes["adversarial"] = None
    elif n_critic is not None and recipe.adversarial is not None:
        if n_critic < 1:
            raise UsageError("must be at least 1", option="n_critic")
        changes["adversarial"] = replace(recipe.adversarial, n_critic=n_critic)
    out = replace(recipe, **changes)
    if not out.losses and out.adversarial is None:
        raise UsageError("the recipe has no loss terms left")
    return out
