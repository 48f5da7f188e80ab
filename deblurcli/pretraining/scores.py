"""From ``deblur eval`` results to manifest scores, quality bars and the shipping rule."""

from __future__ import annotations

from typing import Any

# A new model must beat the shipped one by this much: a few steps of fine-tuning move the
# gain by a thousandth of a dB either way, which is noise, not a better model.
SHIP_MARGIN_DB = 0.05
_SUMMARY_COLUMNS = (
    "psnr_gain",
    "gaussian_psnr_gain",
    "motion_psnr_gain",
    "noisy_psnr_gain",
    "camera_psnr_gain",
    "check_psnr_gain",
    "restore_mp_per_s",
)


def model_row(result: dict[str, Any]) -> dict[str, Any]:
    """The (first) model's row of an eval summary."""
    return next(r for r in result["rows"] if r["kind"] == "model")


def rows_by_kind(result: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(blurry input, unsharp baseline, model) rows of an eval summary."""
    rows = result["rows"]
    blurry = next(r for r in rows if r["kind"] == "input")
    unsharp = next(r for r in rows if r["key"] == "unsharp")
    return blurry, unsharp, model_row(result)


def flat_scores(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """Manifest ``scores``: the model's PSNR/SSIM and gains, overall and per family."""
    blurry, unsharp, model = rows_by_kind(result)
    out = {
        "psnr": model["psnr"],
        "ssim": model["ssim"],
        "psnr_gain": model["psnr_gain"],
        "blurry_psnr": blurry["psnr"],
        "unsharp_psnr": unsharp["psnr"],
    }
    for family, values in sorted(model["families"].items()):
        out[f"{family}_psnr"] = values["psnr"]
        out[f"{family}_psnr_gain"] = values["psnr"] - blurry["families"][family]["psnr"]
    return {f"{prefix}{k}": round(float(v), 4) for k, v in out.items() if v is not None}


def quality_bars(result: dict[str, Any], default: bool) -> dict[str, bool]:
    """Issue #8's bars on one eval: mixed-set gain, each family, and unsharp for the default."""
    blurry, unsharp, model = rows_by_kind(result)
    families = sorted(model["families"].items())
    bars = {"mixed gain >= 2.0 dB": model["psnr_gain"] >= 2.0}
    for family, values in families:
        bars[f"beats blurry on {family}"] = values["psnr"] > blurry["families"][family]["psnr"]
    if default:
        bars["mixed gain >= 3.0 dB (default)"] = model["psnr_gain"] >= 3.0
        for family, values in families:
            bars[f"beats unsharp on {family} (default)"] = (
                values["psnr"] > unsharp["families"][family]["psnr"]
            )
    return bars


def beats_shipped(scores: dict[str, float], shipped: dict[str, float]) -> list[str]:
    """Why ``scores`` do not beat the ``shipped`` model's (empty: they beat it everywhere).

    Both the benchmark gain and, where both were measured, the check photos' gain must be
    higher by ``SHIP_MARGIN_DB``: a model better on one and not on the other is not shipped.
    """
    reasons = []
    for key in ("psnr_gain", "check_psnr_gain"):
        if key in scores and key in shipped and scores[key] < shipped[key] + SHIP_MARGIN_DB:
            reasons.append(
                f"{key} {scores[key]:+.3f} dB is not {SHIP_MARGIN_DB} dB above the shipped "
                f"{shipped[key]:+.3f} dB"
            )
    return reasons


# Gains a cohort's model is compared on with the shipped one: the first two decide, the
# camera family (handheld shake in linear light) is reported beside them.
_COMPARED = (
    ("psnr_gain", "benchmark"),
    ("check_psnr_gain", "check photos"),
    ("gaussian_psnr_gain", "gaussian"),
    ("motion_psnr_gain", "motion"),
    ("noisy_psnr_gain", "noisy"),
    ("camera_psnr_gain", "camera"),
    ("check_camera_psnr_gain", "check camera"),
)


def _cell(scores: dict[str, float], key: str) -> str:
    """A score for a table: gains signed to 0.01 dB, other figures to 0.001, '-' if missing."""
    if key not in scores:
        return "-"
    return f"{scores[key]:+.2f}" if "gain" in key else f"{scores[key]:.3f}"


def comparison_row(
    name: str, scores: dict[str, float], shipped: dict[str, float], trained: str, verdict: str
) -> str:
    """One returned model against the shipped one: each gain as ``new (shipped)``."""
    cells = [f"{_cell(scores, k)} ({_cell(shipped, k)})" for k, _ in _COMPARED]
    return f"| {name} | {' | '.join(cells)} | {trained} | {verdict} |"


def comparison_table(rows: list[str]) -> str:
    """Every returned model of a cohort run against the shipped one (markdown)."""
    labels = " | ".join(label for _, label in _COMPARED)
    head = [f"| model | {labels} | trained | verdict |", "|---|" + "---|" * (len(_COMPARED) + 2)]
    note = (
        "Gains in dB over the blurry input, the shipped model's in brackets; a model ships "
        f"when its benchmark and check-photo gains are both {SHIP_MARGIN_DB} dB above."
    )
    return "\n".join(head + rows) + "\n\n" + note + "\n"


def summary_row(name: str, scores: dict[str, float], size: int, bars: dict[str, bool]) -> str:
    """One model's row of :func:`summary_table`."""
    cells = [_cell(scores, c) for c in _SUMMARY_COLUMNS]
    passed = sum(bars.values())
    return (
        f"| {name} | {scores['psnr']:.2f} | {' | '.join(cells)} | {size / 1e6:.1f} "
        f"| {passed}/{len(bars)} |"
    )


def summary_table(rows: list[str]) -> str:
    """A markdown table of every model's benchmark numbers (for the README)."""
    head = [
        "| model | PSNR dB | gain | gaussian | motion | noisy | camera | check photos "
        "| MP/s 1080p | MB | bars |",
        "|---|" + "---|" * 10,
    ]
    return "\n".join(head + rows) + "\n"
