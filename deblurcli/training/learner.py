"""The model side of a training run, as BasicSR's ``SRModel``: the network, its loss terms,
optimisers, learning-rate schedule, critic and mixed precision, and one optimisation step.

The run around it (settings, data, run folder, validation, checkpoints, the loop) is
:class:`~deblurcli.training.trainer.Trainer`, which owns the step counter and passes it in.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from deblurcli.archs import create_discriminator, get_discriminator_spec
from deblurcli.errors import Note, TrainingDivergedError, UsageError
from deblurcli.training import distributed as dd
from deblurcli.training import losses as L
from deblurcli.training.config import TrainConfig
from deblurcli.training.precision import Precision
from deblurcli.training.recipes import LossTerm, Recipe
from deblurcli.training.vgg import load_vgg19

log = logging.getLogger(__name__)


class _Outputs(nn.Module):
    """Wraps the model so DDP sees one forward that also returns edge logits (edgenet)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.with_edges = hasattr(model, "forward_with_edges")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any, Any]:
        if self.with_edges:
            return self.model.forward_with_edges(x)
        return self.model(x), None, None


class Learner:
    """``model`` trained by ``recipe``: builds the loss terms, then the optimisers.

    ``cfg`` is shared with the trainer (a cohort stretches ``cfg.steps``, which the schedule
    and edgenet's edge-only stage follow); ``frozen``: modules kept in eval mode.
    """

    def __init__(
        self,
        model: nn.Module,
        recipe: Recipe,
        cfg: TrainConfig,
        *,
        device: torch.device,
        dist: dd.DistInfo,
        prec: Precision,
        frozen: list[nn.Module],
    ):
        self.model, self.recipe, self.cfg = model, recipe, cfg
        self.device, self.dist, self.prec, self.frozen = device, dist, prec, frozen
        if device.type == "cuda":  # fixed patch shapes: cuDNN times its conv algorithms once
            torch.backends.cudnn.benchmark = True
        self._setup_losses()
        self._setup_optim()

    # ---------------------------------------------------------------- losses
    def _setup_losses(self) -> None:
        self.vgg, self.perceptual, terms = self._perceptual_terms()
        if not terms and self.recipe.adversarial is None:
            raise UsageError(
                "no loss terms left (perceptual was dropped); pass {loss}", mentions=("loss",)
            )
        self.terms = terms
        shared = {"vgg": self.vgg, "arch": self.cfg.arch}
        shared["has_edges"] = hasattr(self.model, "forward_with_edges")
        self._loss_fns = [L.build_loss(t.name, layer=t.layer, **shared) for t in terms]

    def _perceptual_terms(self) -> tuple[Any, str, list[LossTerm]]:
        """The VGG19 of the perceptual terms, how it was found, and the recipe's terms (with
        its fallback in place of the perceptual ones when the VGG19 weights are missing)."""
        terms = list(self.recipe.losses)
        layers = sorted({t.layer for t in terms if t.name == "perceptual"})
        if not layers:
            if self.cfg.vgg_weights is not None:
                self._warn(
                    Note(
                        "{vgg_weights} ignored: %s has no perceptual term (add one with {loss})",
                        mentions=("vgg_weights", "loss"),
                    ),
                    self.recipe.describe().split(";")[0],
                )
            return None, "not used", terms
        vgg, how = load_vgg19(layers, self.cfg.vgg_weights)
        if vgg is not None:
            return vgg.to(self.device), f"vgg19 {','.join(layers)} from {how}", terms
        fallback = self.recipe.perceptual_fallback
        msg = f"{how}: perceptual loss dropped"
        msg += f", using {fallback} instead" if fallback else ""
        self._warn(Note("%s (pass {vgg_weights} PATH to use it)", mentions=("vgg_weights",)), msg)
        # The fallback keeps the content weight (×100 for deblurgan = pix2pix's L1 λ).
        # Only the perceptual terms are replaced (or dropped); the others stay as they are.
        swapped = [
            dataclasses.replace(t, name=fallback, layer=None) if t.name == "perceptual" else t
            for t in terms
            if t.name != "perceptual" or fallback
        ]
        return None, "dropped", swapped

    def _warn(self, message: Note, *args: object) -> None:
        if self.dist.is_main:  # once per run, not once per rank
            log.warning(message, *args)

    # ---------------------------------------------------------------- optimisers
    def _setup_optim(self) -> None:
        self.net = self._wrapped_model()
        self.forward = torch.compile(self.net) if self.cfg.compile else self.net
        r = self.recipe
        opt_cls = torch.optim.AdamW if r.optimizer == "adamw" else torch.optim.Adam
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = opt_cls(trainable, lr=r.lr, betas=r.betas, weight_decay=r.weight_decay)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, self._lr_factor)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.prec.scaler)
        self.critic, self.critic_opt = self._setup_critic()

    def _wrapped_model(self) -> nn.Module:
        """The model as the loop calls it: one forward with edges, under DDP when distributed."""
        model: nn.Module = self.model
        if self.prec.channels_last:
            model = model.to(memory_format=torch.channels_last)
        net: nn.Module = _Outputs(model)
        if self.dist.enabled:
            net = nn.parallel.DistributedDataParallel(
                net,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.recipe.edge_pretrain > 0,
            )
        return net

    def _setup_critic(self) -> tuple[nn.Module | None, torch.optim.Optimizer | None]:
        """The discriminator the recipe names, and its optimiser (None, None without one)."""
        adv = self.recipe.adversarial
        if adv is None:
            return None, None
        # Tiny models get a critic of matching width so tests and CPU runs stay fast.
        tiny = get_discriminator_spec(adv.critic).tiny_config if self.cfg.width == "tiny" else {}
        critic = create_discriminator(adv.critic, **{**tiny, **self.cfg.critic_config})
        critic = critic.to(self.device)
        if self.prec.channels_last:
            critic = critic.to(memory_format=torch.channels_last)
        return critic, torch.optim.Adam(critic.parameters(), lr=adv.lr, betas=adv.betas)

    def _lr_factor(self, step: int) -> float:
        r, total = self.recipe, max(1, self.cfg.steps)
        warm = min(1.0, (step + 1) / r.warmup_steps) if r.warmup_steps else 1.0
        progress = min(1.0, step / total)
        if r.schedule == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * progress))
        if r.schedule == "linear":  # DeblurGAN: constant for the first half, then to zero
            return warm * min(1.0, 2 * (1 - progress))
        return warm

    def lr(self) -> float:
        """The generator's current learning rate."""
        return self.sched.get_last_lr()[0]

    def stateful(self) -> dict[str, Any]:
        """What the training state holds, by its keys in ``checkpoints/last.pt``."""
        return {
            "model": self.model,
            "optimizer": self.opt,
            "scheduler": self.sched,
            "scaler": self.scaler,
            "critic": self.critic,
            "critic_optimizer": self.critic_opt,
        }

    # ---------------------------------------------------------------- one step
    def autocast(self) -> AbstractContextManager[Any]:
        if self.prec.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.prec.dtype)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(self.device, non_blocking=True)
        return t.contiguous(memory_format=torch.channels_last) if self.prec.channels_last else t

    def edge_stage(self, step: int) -> bool:
        """Whether ``step`` trains the edge branch alone (edgenet's first stage)."""
        return step < int(self.recipe.edge_pretrain * self.cfg.steps)

    def train_step(
        self, batch: tuple[torch.Tensor, torch.Tensor, Any], step: int
    ) -> dict[str, float]:
        """Optimise on ``batch`` as step ``step + 1``; returns the loss terms as floats."""
        blurred, sharp = self.to_device(batch[0]), self.to_device(batch[1])
        self.net.train()
        for module in self.frozen:  # frozen batch-norm statistics stay as they are
            module.eval()
        critic = None
        if self.recipe.adversarial is not None and not self.edge_stage(step):
            critic = self._critic_steps(blurred, sharp)
        terms = self.losses(blurred, sharp, step)
        loss = sum(terms.values(), torch.zeros((), device=self.device))
        self._check_loss(loss, terms, step)
        self._optimise(loss)
        out = {k: float(v.detach()) for k, v in terms.items()}
        out["loss"] = float(loss.detach())
        if critic is not None:
            out["critic"] = critic
        return out

    def _critic_steps(self, blurred: torch.Tensor, sharp: torch.Tensor) -> float:
        adv = self.recipe.adversarial
        assert adv is not None and self.critic is not None and self.critic_opt is not None
        self.critic.requires_grad_(True)
        loss = torch.zeros(())
        for _ in range(adv.n_critic):
            with torch.no_grad(), self.autocast():
                fake = self.forward(blurred)[0]
            # fp32: the gradient penalty differentiates twice, bf16 is too coarse for it
            loss = L.critic_loss(adv.kind, self.critic, sharp, fake, adv.gp_weight)
            self.critic_opt.zero_grad(set_to_none=True)
            loss.backward()
            dd.average_gradients(self.critic, self.dist)
            self.critic_opt.step()
        self.critic.requires_grad_(False)
        return float(loss.detach())

    def losses(
        self, blurred: torch.Tensor, sharp: torch.Tensor, step: int
    ) -> dict[str, torch.Tensor]:
        """The weighted loss terms of the model on a batch (on the device) at ``step``."""
        with self.autocast():
            pred = L.Prediction(*self.forward(blurred))
            terms: dict[str, torch.Tensor] = {}
            edge_only = self.edge_stage(step)  # the edge branch alone, on its own loss
            for term, loss_fn in zip(self.terms, self._loss_fns, strict=True):
                if edge_only and term.name != "edge_bce":
                    continue
                weight = 1.0 if edge_only else term.weight
                terms[term.name] = weight * loss_fn(pred, sharp)
            adv = self.recipe.adversarial
            if adv is not None and self.critic is not None:
                adv_loss = L.generator_adv_loss(adv.kind, self.critic, pred.restored)
                terms["adv"] = adv.weight * adv_loss
        return terms

    def _check_loss(self, loss: torch.Tensor, terms: dict[str, torch.Tensor], step: int) -> None:
        if not dd.all_finite(loss, self.dist):
            detail = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in terms.items())
            raise TrainingDivergedError(
                f"loss became {float(loss.detach())} at step {step + 1} ({detail})"
            )
        if not loss.requires_grad:
            raise UsageError(
                f"at step {step + 1} the loss reaches no trainable parameter "
                f"({{freeze}} {' '.join(self.cfg.freeze)} froze them all); freeze less",
                mentions=("freeze",),
            )

    def _optimise(self, loss: torch.Tensor) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.recipe.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.recipe.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
