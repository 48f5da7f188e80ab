"""``deblur weights push`` against the loopback Hub, then restoring from what it published.

Nothing is mocked: huggingface_hub's create_repo/upload_folder talk HTTP to the loopback server
(preupload, LFS batch + PUT + verify, NDJSON commit, README metadata validation), and the
round trip downloads the pushed files back through hf_hub_download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from _loopback_hub import LoopbackHub
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.weights import card, manifest, publish
from deblurcli.weights.manifest import load_manifest
from deblurcli.weights.resolve import load_model
from tests.conftest import natural_image

runner = CliRunner()
REPO_ROOT = Path(__file__).resolve().parent.parent
OWNER_REPO = "someone/tiny-deblur"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A real (two-step, tiny) ``deblur train`` run folder, and its eval result."""
    root = tmp_path_factory.mktemp("push")
    for i in range(4):
        sharp = natural_image(48, 48, seed=i)
        write_image(root / "pairs" / "sharp" / f"p{i}.png", ImageData(sharp))
        write_image(root / "pairs" / "blurred" / f"p{i}.png", ImageData(sharp * 0.8 + 0.1))
    out = root / "run"
    args = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", str(root / "pairs")]
    args += ["--patch-size", "32", "--batch-size", "2", "--steps", "2", "--out", str(out)]
    result = runner.invoke(app, [*args, "--val-every", "2", "--workers", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scored = runner.invoke(
        app,
        ["eval", "--model", str(out), "--data", str(root / "pairs"), "--device", "cpu", "--json"],
    )
    assert scored.exit_code == 0, scored.output
    (root / "eval.json").write_text(scored.stdout)
    return out


def _push(hub: LoopbackHub, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    # Xet storage is not what the loopback serves: the plain LFS protocol is.
    env = {**os.environ, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "hf_loopback"}
    cmd = [sys.executable, "-m", "deblurcli", "weights", "push", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)


def test_push_then_restore_from_the_hub_gives_the_same_pixels(hub, tmp_path, run):
    eval_json = run.parent / "eval.json"
    proc = _push(hub, tmp_path, str(run), "--repo", OWNER_REPO, "--eval", str(eval_json))
    assert proc.returncode == 0, proc.stderr
    commit = hub.state.refs[(OWNER_REPO, "main")]
    files = hub.state.files[(OWNER_REPO, commit)]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    assert files["model.safetensors"] == (run / "model.safetensors").read_bytes()
    assert json.loads(files["config.json"])["arch"] == "simplecnn"
    methods = [(m, p.split("?")[0]) for m, p in hub.state.requests]
    assert ("POST", "/api/repos/create") in methods
    assert ("PUT", f"/lfs-upload/{card_sha(run)}") in methods  # the weights went up as LFS

    # The printed entry, pinned to the commit, makes the model resolvable by name.
    assert f'revision = "{commit}"' in proc.stdout and f"hf://{OWNER_REPO}@{commit}" in proc.stderr
    manifest = tmp_path / "m.toml"
    manifest.write_text("schema_version = 1\n\n" + proc.stdout)
    entry = load_manifest(manifest).entries[0]
    assert entry.name == "simplecnn.tiny-deblur" and entry.hub_repo == OWNER_REPO
    assert entry.scores["psnr"] > 0
    assert load_model(entry.name, manifest=manifest).arch_name == "simplecnn"

    src = write_image(tmp_path / "photo.png", ImageData(natural_image(40, 56, seed=7)))
    outs = {}
    for label, model in (
        ("local", str(run / "model.safetensors")),
        ("hub", f"hf://{OWNER_REPO}@{commit}"),
    ):
        out = tmp_path / f"{label}.png"
        result = runner.invoke(app, ["restore", str(src), "--model", model, "-o", str(out)])
        assert result.exit_code == 0, result.output
        outs[label] = read_image(out).pixels
    assert np.array_equal(outs["local"], outs["hub"])


def card_sha(run: Path) -> str:
    from deblurcli.weights import sha256_file

    return sha256_file(run / "model.safetensors")


def test_model_card_has_hub_metadata_and_the_run_facts(hub, tmp_path, run):
    args = [str(run / "model.safetensors"), "--repo", OWNER_REPO, "--revision", "dev"]
    args += ["--eval", str(run.parent / "eval.json"), "--license", "CC-BY-4.0", "--private"]
    proc = _push(hub, tmp_path, *args)
    assert proc.returncode == 0, proc.stderr
    assert hub.state.repos[OWNER_REPO]["private"] is True
    assert (OWNER_REPO, "main") not in hub.state.refs  # committed to the new branch only
    readme = hub.state.files[(OWNER_REPO, hub.state.refs[(OWNER_REPO, "dev")])]["README.md"]
    text = readme.decode()
    header, body = text[4:].split("\n---\n", 1)
    meta = yaml.safe_load(header)
    assert meta["library_name"] == "deblurcli" and meta["license"] == "cc-by-4.0"
    assert meta["pipeline_tag"] == "image-to-image" and "simplecnn" in meta["tags"]
    psnr = meta["model-index"][0]["results"][0]["metrics"][0]
    scores = json.loads((run.parent / "eval.json").read_text())["rows"]
    model_row = next(r for r in scores if r["kind"] != "input")
    assert psnr == {"type": "psnr", "value": pytest.approx(model_row["psnr"], abs=1e-4)}
    # architecture, config, training data and command, eval scores
    assert "7-conv residual CNN" in body and '"widths": [8, 8, 8, 8, 8, 8]' in body
    assert str(run.parent / "pairs") in body
    assert "deblur train --arch simplecnn --data" in body and "--steps 2" in body
    assert f"{model_row['psnr']:.2f}" in body and "trained: 2 steps" in body


def test_the_card_and_manifest_writers_are_the_ones_the_pretrained_pipeline_uses():
    from deblurcli.pretraining import pipeline

    assert pipeline.model_card is card.model_card
    assert pipeline.write_manifest is manifest.write_manifest
    assert publish.entry_block is manifest.entry_block


def test_push_refuses_what_it_cannot_publish(tmp_path, hub):
    (tmp_path / "x.pth").write_bytes(b"")
    for source, repo, expected in (
        (str(tmp_path / "x.pth"), OWNER_REPO, "only deblurcli checkpoints"),
        (str(tmp_path / "nothing"), OWNER_REPO, "no such run folder"),
        (str(tmp_path), "not-a-repo", "expected owner/name"),
    ):
        result = runner.invoke(app, ["weights", "push", source, "--repo", repo])
        assert result.exit_code != 0 and expected in result.output
        assert len(result.output.strip().splitlines()) == 1
