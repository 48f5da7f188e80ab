"""``deblur train``: train one of the six architectures on paired data (issue #6)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from deblurcli.cli._common import console, err_console, friendly_errors, report_skipped, say
from deblurcli.errors import UsageError


def _parse_config(items: list[str], flag: str = "--config") -> dict[str, object]:
    """``key=value`` pairs; values are JSON when they parse (numbers, lists), else strings."""
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@friendly_errors
def train(
    arch: str | None = typer.Option(
        None,
        "--arch",
        "-a",
        help="Architecture to train (deblur models); --init MODEL's by default.",
    ),
    data: Path | None = typer.Option(
        None, "--data", "-d", help="Dataset: DIR/sharp + DIR/blurred, GoPro, or sharp images."
    ),
    sharp: Path | None = typer.Option(None, "--sharp", help="Folder of sharp images."),
    blurred: Path | None = typer.Option(None, "--blurred", help="Folder of blurred images."),
    val: Path | None = typer.Option(
        None, "--val", help="Validation dataset (default: ~10% of --data, chosen by name hash)."
    ),
    degrade: str | None = typer.Option(
        None, "--degrade", help="Blur sharp-only --data on the fly: motion, gaussian, mix, ..."
    ),
    degrade_option: list[str] = typer.Option(
        [],
        "--degrade-option",
        help="With --degrade: a blur setting key=value (repeatable), e.g. mix_noise_prob=0, "
        "gaussian_sigma=[1,3] (the fields of deblurcli.degradations.DegradeOptions).",
    ),
    patch_size: int = typer.Option(128, "--patch-size", min=8, help="Random crop size."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Patches per step."),
    steps: int = typer.Option(1000, "--steps", min=1, help="Total optimisation steps."),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: the recipe's)."),
    loss: str | None = typer.Option(
        None,
        "--loss",
        help="Loss terms NAME[:WEIGHT],...: l1 (mae), mse, charbonnier, psnr, fft, fft_amp, "
        "perceptual[@LAYER], edge_bce; e.g. 'charbonnier,fft:0.05'.",
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", min=0.0, help="Weight decay (default: the recipe's)."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="LR schedule: constant, cosine, linear (default: the recipe's)."
    ),
    warmup: int | None = typer.Option(
        None, "--warmup", min=0, help="Linear learning-rate warm-up steps (default: the recipe's)."
    ),
    grad_clip: float | None = typer.Option(
        None, "--grad-clip", min=0.0, help="Gradient-norm clip; 0 turns it off."
    ),
    no_adversarial: bool = typer.Option(
        False, "--no-adversarial", help="Train GAN recipes without their critic."
    ),
    n_critic: int | None = typer.Option(
        None, "--n-critic", help="Critic updates per generator step (GAN recipes)."
    ),
    width: str = typer.Option("default", "--width", help="default, or tiny (tests, smoke runs)."),
    config: list[str] = typer.Option(
        [], "--config", "-c", help="Architecture config override key=value (repeatable)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run folder.", show_default="runs/ARCH"
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out exactly."),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Fine-tune: start from this model (a name, checkpoint, run folder or hf://...).",
    ),
    freeze: list[str] = typer.Option(
        [], "--freeze", help="Do not train parameters whose names start with this (repeatable)."
    ),
    vgg_weights: Path | None = typer.Option(
        None, "--vgg-weights", help="VGG19 ImageNet weights (.pth) for perceptual losses."
    ),
    workers: int = typer.Option(2, "--workers", min=0, help="DataLoader worker processes."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N."),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16, fp16 (CUDA)."),
    compile_model: bool = typer.Option(False, "--compile", help="Use torch.compile."),
    seed: int = typer.Option(
        0, "--seed", help="Seed of the weights' init and the data order (same seed, same run)."
    ),
    val_every: int | None = typer.Option(
        None, "--val-every", min=1, help="Validate every N steps [500; --resume: the run's]."
    ),
    ckpt_every: int | None = typer.Option(
        None, "--ckpt-every", min=1, help="Checkpoint every N steps [500; --resume: the run's]."
    ),
    val_crops: int = typer.Option(
        1,
        "--val-crops",
        min=1,
        max=9,
        help="Validation crops per image, each blurred anew: the centre, then around it. More "
        "crops, a steadier choice of the best checkpoint.",
    ),
    bn_calibration: int = typer.Option(
        512,
        "--bn-calibration",
        min=0,
        help="Training patches over which BatchNorm statistics are recomputed before each "
        "validation (models with BatchNorm only); 0 keeps the running averages.",
    ),
    freeze_bn: bool = typer.Option(
        False,
        "--freeze-bn",
        help="Keep BatchNorm statistics fixed while training: recomputed over the "
        "--bn-calibration patches before the first step, then used as they are (for "
        "fine-tuning with --init).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Train an architecture (--arch NAME) on sharp/blurred pairs with its paper's recipe.

    --init MODEL fine-tunes a pretrained model instead of starting from random weights.
    Writes RUN/model.safetensors, loadable by 'deblur restore --model' and 'deblur eval'.
    Under 'torchrun --nproc_per_node=N -m deblurcli train ...' it trains with DDP.
    """
    from deblurcli.training import TrainConfig
    from deblurcli.training import train as run_training

    cfg = TrainConfig(
        arch=arch,
        out=out,
        data=data,
        sharp=sharp,
        blurred=blurred,
        val=val,
        degrade=degrade,
        degrade_options=_parse_config(degrade_option, "--degrade-option"),
        patch_size=patch_size,
        batch_size=batch_size,
        steps=steps,
        lr=lr,
        loss=loss,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup=warmup,
        grad_clip=grad_clip,
        adversarial=not no_adversarial,
        n_critic=n_critic,
        width=width,
        arch_config=_parse_config(config),
        resume=resume,
        init=init,
        freeze=tuple(freeze),
        vgg_weights=vgg_weights,
        workers=workers,
        device=device,
        precision=precision,
        compile=compile_model,
        seed=seed,
        val_every=val_every,
        ckpt_every=ckpt_every,
        val_crops=val_crops,
        bn_calibration=bn_calibration,
        freeze_bn=freeze_bn,
        progress=not as_json and err_console.is_terminal,
    )
    result = run_training(cfg, console=err_console)
    import os

    if int(os.environ.get("RANK", "0")) != 0:
        return
    report_skipped(result.problems)
    if as_json:
        console.print_json(json.dumps(result.to_json()))
        return
    best = "n/a" if result.best_psnr is None else f"{result.best_psnr:.2f} dB"
    if result.new_steps == 0:
        say(
            f"{result.run_dir} already trained for {result.step}/{result.steps} steps "
            f"(best val PSNR {best}); pass a larger --steps with --resume to go on; "
            f"model: {result.model_path}"
        )
        return
    start = f" from {result.init['model']}" if result.init else ""
    if result.best_psnr is not None and result.blurry_psnr is not None:
        best += f" (blurry input {result.blurry_psnr:.2f} dB on the same pairs)"
    say(
        f"trained {result.arch}{start} for {result.step}/{result.steps} steps: "
        f"loss {result.last_loss:.4g}, "
        f"best val PSNR {best}, {result.patches_per_s:.1f} patches/s "
        f"({result.precision}{', channels_last' if result.channels_last else ''}); "
        f"model: {result.model_path}"
    )
