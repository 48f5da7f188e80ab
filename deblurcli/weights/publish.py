"""Publish a trained model to the Hugging Face Hub (``deblur weights push``).

Three files go up in one commit: ``model.safetensors``, a ``config.json`` naming the arch and
its config (what :mod:`.resolve` reads beside a Hub checkpoint), and a ``README.md`` model
card written by :mod:`.card`, the generator of docs/models/, under the Hub's YAML metadata
header. The result carries the ``weights_manifest.toml`` entry pinned to the new commit.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deblurcli._hashing import sha256_file
from deblurcli._toml import tomllib
from deblurcli.archs import count_parameters, get_spec
from deblurcli.errors import CheckpointError, UsageError
from deblurcli.weights import hub
from deblurcli.weights.card import hub_front_matter, model_card
from deblurcli.weights.checkpoint import ARCH_KEY, load_checkpoint, read_metadata
from deblurcli.weights.manifest import entry_block, parse_manifest

_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# ``deblur train`` options rebuilt from a run's saved settings, in the order users write them.
_TRAIN_FLAGS = (
    "data", "sharp", "blurred", "val", "degrade", "width", "patch_size", "batch_size", "steps",
    "lr", "loss", "schedule", "seed", "precision",
)  # fmt: skip


@dataclass
class PushResult:
    """What ``push_model`` published: where, at which commit, and the manifest entry."""

    repo_id: str
    revision: str
    uri: str
    entry: dict[str, Any]

    @property
    def manifest_text(self) -> str:
        return entry_block(self.entry)


def find_checkpoint(source: str | Path) -> tuple[Path, Path | None]:
    """(``model.safetensors``, run folder or None) for a run folder or a checkpoint file."""
    path = Path(source).expanduser()
    run = path if path.is_dir() else None
    if run is not None:
        path = run / "model.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{source}: no such run folder or checkpoint file")
    if path.suffix != ".safetensors" or ARCH_KEY not in read_metadata(path):
        raise CheckpointError(
            f"{path}: only deblurcli checkpoints (a 'deblur train' run or its "
            "model.safetensors) can be pushed"
        )
    if run is None and (path.parent / "config.json").is_file():
        run = path.parent  # a run's model.safetensors named directly
    return path, run


def _train_command(arch: str, settings: dict[str, Any]) -> str:
    args = ["deblur", "train", "--arch", arch]
    for key in _TRAIN_FLAGS:
        value = settings.get(key)
        if value is not None and value != "default":
            args += [f"--{key.replace('_', '-')}", str(value)]
    for key, value in (settings.get("arch_config") or {}).items():
        args += ["--config", f"{key}={json.dumps(value) if not isinstance(value, str) else value}"]
    return " ".join(args)


def _load_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def flat_scores(result: dict[str, Any]) -> dict[str, float]:
    """Manifest ``scores`` from a ``deblur eval --json`` result (its first model row)."""
    rows = result.get("rows") or []
    model = next((r for r in rows if r.get("kind") != "input"), None)
    if model is None:
        return {}
    scores = {"psnr": model["psnr"], "ssim": model["ssim"]}
    if model.get("psnr_gain") is not None:
        scores["psnr_gain"] = model["psnr_gain"]
    for family, values in (model.get("families") or {}).items():
        scores[f"{family}_psnr"] = values["psnr"]
    return {k: round(float(v), 4) for k, v in scores.items()}


def describe_for_card(
    checkpoint: Path,
    run: Path | None,
    *,
    name: str,
    license: str,
    eval_result: dict[str, Any] | None = None,
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """(arch, manifest-style entry, card info) of a checkpoint, from its metadata and run."""
    meta = read_metadata(checkpoint)
    model = load_checkpoint(checkpoint)
    arch, spec = model.arch_name, get_spec(model.arch_name)
    try:
        settings = json.loads(meta.get("train_config") or "{}")
    except ValueError:
        settings = {}
    done = _load_json(run / "train_result.json") if run else None
    command = (done or {}).get("command") or (_train_command(arch, settings) if settings else "")
    data = settings.get("data") or settings.get("sharp") or "not recorded"
    degrade = f" (--degrade {settings['degrade']})" if settings.get("degrade") else ""
    if eval_result is None and run is not None:
        eval_result = (_load_json(run / "pipeline_result.json") or {}).get("eval")
    entry: dict[str, Any] = {
        "name": name,
        "arch": arch,
        "file": "model.safetensors",
        "sha256": sha256_file(checkpoint),
        "size": checkpoint.stat().st_size,
        "license": license,
        "config": {k: v for k, v in model.arch_config.items() if spec.default_config.get(k) != v},
        "dataset": f"{data}{degrade}",
        "recipe": command,
        "description": f"{spec.title}, trained with deblurcli",
    }
    if eval_result is not None:
        entry["scores"] = flat_scores(eval_result)
        entry["benchmark"] = str((eval_result.get("settings") or {}).get("data") or "deblur eval")
    step = meta.get("step")
    info: dict[str, Any] = {
        "title": spec.title,
        "arch_config": dict(model.arch_config),
        "default_config": spec.default_config,
        "params": count_parameters(model),
        "recipe": meta.get("deblurcli.recipe", "not recorded"),
        "step": int(step) if step and step.isdigit() else None,
        "precision": meta.get("precision", "fp32"),
        "eval": eval_result,
    }
    return arch, entry, info


def hub_card(arch: str, entry: dict[str, Any], info: dict[str, Any], repo_id: str) -> str:
    """The Hub README: metadata header, then the same card docs/models/ gets."""
    body = model_card(
        arch,
        entry,
        info,
        None,
        False,
        file_where=f"hf://{repo_id}/model.safetensors",
        config_note="its own choice of width and depth where it differs",
        licence_note="of these weights; check the training data's licences too",
        reproduce=False,
    )
    body = body.replace(" (fp16 safetensors, ", " (safetensors, ", 1)
    usage = [
        "## Use it",
        "",
        "```bash",
        "pip install deblurcli",
        f"deblur restore photo.jpg --model hf://{repo_id}",
        "```",
        "",
        f"Add `@COMMIT` (`hf://{repo_id}@COMMIT`) to pin the exact files.",
        "",
    ]
    return hub_front_matter(arch, entry, info) + body + "\n" + "\n".join(usage)


def push_model(
    source: str | Path,
    repo_id: str,
    *,
    branch: str = "main",
    private: bool = False,
    name: str | None = None,
    license: str = "MIT",
    eval_result: dict[str, Any] | None = None,
) -> PushResult:
    """Upload a run's (or a file's) model, config.json and model card as one commit."""
    if not _REPO_ID.fullmatch(repo_id):
        raise UsageError(f"{repo_id!r}: expected owner/name", option="repo")
    checkpoint, run = find_checkpoint(source)
    arch = read_metadata(checkpoint)[ARCH_KEY]
    slug = re.sub(r"[^a-z0-9_-]+", "-", repo_id.split("/")[1].lower()).strip("-") or "hub"
    name = name or f"{arch}.{slug}"
    arch, entry, info = describe_for_card(
        checkpoint, run, name=name, license=license, eval_result=eval_result
    )
    with tempfile.TemporaryDirectory(prefix="deblur-push-") as tmp:
        folder = Path(tmp)
        shutil.copyfile(checkpoint, folder / "model.safetensors")
        config = {"arch": arch, "config": info["arch_config"], "library": "deblurcli"}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        card = hub_card(arch, entry, info, repo_id)
        (folder / "README.md").write_text(card, encoding="utf-8")
        commit = hub.upload_folder(
            folder, repo_id, branch=branch, private=private, message=f"Upload {name}"
        )
    entry.update(hub_repo=repo_id, revision=commit)
    # Never print an entry the manifest would refuse.
    parse_manifest(tomllib.loads("schema_version = 1\n" + entry_block(entry)), Path("<push>"))
    return PushResult(repo_id, commit, f"hf://{repo_id}@{commit}", entry)
