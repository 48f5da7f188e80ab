"""Model cards: one generator for docs/models/ and for the Hub.

:func:`model_card` writes the markdown card of a model from its manifest ``entry`` and an
``info`` record (title, configs, parameters, recipe, training figures, ``deblur eval --json``
results). The pretrained pipeline (:mod:`deblurcli.pretraining`) writes the shipped models'
cards with it; ``deblur weights push`` prepends the Hub's YAML metadata header
(:func:`hub_front_matter`) to the same card. The manifest's text is written by
:mod:`deblurcli.weights.manifest`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SHIPPED_CONFIG_NOTE = (
    "the shipped model is narrower where CPU training needed it, the paper config stays "
    "the registry default"
)
PHOTO_POOL_LICENCE_NOTE = (
    "derived from the photo pool; see [docs/dataset.md](../dataset.md) for each photo's licence"
)


def score_table(result: dict[str, Any]) -> list[str]:
    """Markdown rows of a ``deblur eval --json`` result: PSNR/SSIM, gain, per family."""
    rows = result["rows"]
    families = sorted({f for r in rows for f in r.get("families", {})})
    head = "| | PSNR dB | SSIM | gain dB | " + " | ".join(f"{f} dB" for f in families) + " |"
    lines = [head, "|" + "---|" * (4 + len(families))]
    for r in rows:
        fam = " | ".join(f"{r['families'][f]['psnr']:.2f}" for f in families)
        gain = "" if r["kind"] == "input" else f"{r['psnr_gain']:+.2f}"
        lines.append(f"| {r['label']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {gain} | {fam} |")
    return lines


def _lineage_lines(lineage: dict[str, Any] | None) -> list[str]:
    """'initialised from' lines of a fine-tuned model, back to its first ancestor."""
    lines = []
    prefix = "- initialised from"
    while lineage:
        name = lineage.get("manifest_name") or lineage["model"]
        lines.append(
            f"{prefix}: `{name}` ({lineage['arch']}, file `{Path(lineage['file']).name}`, "
            f"sha256 `{lineage['sha256']}`)"
        )
        lineage, prefix = lineage.get("parent"), "  - which was initialised from"
    return lines


def _training_line(info: dict[str, Any]) -> list[str]:
    if info.get("step") is None:
        return []
    rate = info.get("patches_per_s")
    speed = f", {rate:.1f} patches/s" if rate is not None else ""
    return [f"- trained: {info['step']} steps, {info['precision']}{speed}"]


def _command_lines(arch: str, entry: dict[str, Any], reproduce: bool) -> list[str]:
    if not entry.get("recipe"):
        return []
    lines = ["Exact command:", "", "```bash", entry["recipe"], "```", ""]
    if reproduce:
        lines += [
            "Reproduce it (the photo pool, then this model's part of the plan):",
            "",
            "```bash",
            "deblur data fetch && deblur data prepare",
            f"python scripts/train_pretrained.py --arch {arch}",
            "```",
            "",
        ]
    return lines


def _score_sections(entry: dict[str, Any], info: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if info.get("eval") is not None:
        lines += [
            f"## Benchmark ({entry.get('benchmark', '`deblur eval --benchmark`')})",
            "",
            *score_table(info["eval"]),
            "",
        ]
    if info.get("check") is not None:
        lines += [
            "## Independent check (photos kept apart from the pool)",
            "",
            "The same benchmark rule on photos from another source and other photographers, "
            "never used for training or checkpoint selection (`deblur data fetch --pool check`;"
            " list in `deblurcli/data/check_photos.toml`).",
            "",
            *score_table(info["check"]),
            "",
        ]
    cameras = {"benchmark": info.get("camera"), "check": info.get("check_camera")}
    if any(cameras.values()):
        lines += [
            "## Camera-like blur (`deblur eval --benchmark --benchmark-family camera`)",
            "",
            "Spatially varying handheld shake in linear light with saturated highlights, camera "
            "noise and JPEG; the same crops and rule, scored apart from the benchmark and its "
            "bars.",
            "",
        ]
        for photos, result in cameras.items():
            if result is not None:
                lines += [f"On the {photos} photos:", "", *score_table(result), ""]
    if info.get("bars"):
        lines += ["## Quality bars (issue #8)", ""]
        lines += [f"- {'pass' if ok else 'FAIL'}: {name}" for name, ok in info["bars"].items()]
    if info.get("mp_per_s") is not None:
        w, h = info["speed_size"]
        lines += [
            "",
            f"Restore speed on CPU ({info['speed_threads']} thread(s), `deblur restore` "
            "defaults): "
            f"{info['mp_per_s']:.3f} MP/s at {w}×{h}.",
        ]
    return lines


def model_card(
    arch: str,
    entry: dict[str, Any],
    info: dict[str, Any],
    picture: str | None,
    default: bool,
    *,
    file_where: str | None = None,
    config_note: str = SHIPPED_CONFIG_NOTE,
    licence_note: str = PHOTO_POOL_LICENCE_NOTE,
    reproduce: bool = True,
) -> str:
    """The markdown model card of one model.

    The keyword arguments default to the shipped models' wording (docs/models/); sections
    whose facts ``info`` lacks (scores, quality bars, speed, training figures) are left out.
    """
    where = file_where or f"deblurcli/pretrained/{entry['file']}"
    lines = [
        f"# `{entry['name']}`: {info['title']}",
        "",
        f"{entry['description']}",
        "",
        *(
            ["The default model: `deblur restore` uses it when `--model` is omitted.", ""]
            if default
            else []
        ),
        f"- file: `{where}` (fp16 safetensors, "
        f"{entry['size'] / 1e6:.2f} MB, sha256 `{entry['sha256']}`)",
        f"- config: `{json.dumps(info['arch_config'])}` (registry default: "
        f"`{json.dumps(info['default_config'])}`; {config_note})",
        f"- parameters: {info['params']:,}",
        f"- licence: {entry['license']} ({licence_note})",
        f"- training data: {entry['dataset']}",
        f"- recipe: {info['recipe']}",
        *_lineage_lines(info.get("init")),
        *_training_line(info),
        "",
        *_command_lines(arch, entry, reproduce),
        *_score_sections(entry, info),
    ]
    if picture is not None:
        lines += [
            "",
            "## Before / after",
            "",
            f"![blurry, restored, sharp]({Path(picture).name})",
            "",
            f"Left to right: blurry input, `{entry['name']}`, sharp target "
            f"(benchmark crop `{info['picture_source']}`).",
        ]
    return "\n".join(lines) + "\n"


# Licence identifiers the Hub's metadata accepts as they are (the rest become "other").
_HUB_LICENCES = {
    "mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause", "gpl-2.0", "gpl-3.0", "lgpl-3.0",
    "agpl-3.0", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "openrail",
}  # fmt: skip


def _yaml_scalar(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid YAML scalar


def hub_front_matter(arch: str, entry: dict[str, Any], info: dict[str, Any]) -> str:
    """The Hub's model-card metadata header (YAML between ``---`` lines)."""
    licence = str(entry.get("license") or "other")
    known = licence.lower() in _HUB_LICENCES
    lines = [
        "---",
        "library_name: deblurcli",
        f"license: {licence.lower() if known else 'other'}",
        *([] if known else [f"license_name: {_yaml_scalar(licence)}"]),
        "pipeline_tag: image-to-image",
        "tags:",
        *(f"- {t}" for t in ("deblurring", "image-restoration", "deblurcli", arch)),
    ]
    result = info.get("eval")
    model_rows = [r for r in (result or {}).get("rows", []) if r.get("kind") != "input"]
    if model_rows:
        row = model_rows[0]
        dataset = entry.get("benchmark") or "deblur eval"
        lines += [
            "model-index:",
            f"- name: {_yaml_scalar(entry['name'])}",
            "  results:",
            "  - task:",
            "      type: image-to-image",
            "      name: Image deblurring",
            "    dataset:",
            f"      name: {_yaml_scalar(dataset)}",
            "      type: deblurcli-benchmark",
            "    metrics:",
            "    - type: psnr",
            f"      value: {row['psnr']:.4f}",
            "    - type: ssim",
            f"      value: {row['ssim']:.4f}",
        ]
    return "\n".join([*lines, "---", ""]) + "\n"
