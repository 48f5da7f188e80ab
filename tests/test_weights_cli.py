"""``deblur weights list|download|verify|path`` and the pretrained column of ``deblur models``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from _loopback_hub import LoopbackHub
from _weights_helpers import COMMIT, REPO, entry_for, tiny_checkpoint, write_manifest
from typer.testing import CliRunner

from deblurcli.cli import app

runner = CliRunner()
HUB_FILE = "transformnet-tiny.safetensors"
SHIPPED_FILE = "simplecnn-tiny.safetensors"


@pytest.fixture
def env(tmp_path, monkeypatch):
    """Loopback Hub + a manifest with one shipped and one Hub-published model."""
    hub = LoopbackHub()
    _, shipped = tiny_checkpoint(tmp_path / "pretrained" / SHIPPED_FILE)
    _, published = tiny_checkpoint(tmp_path / "src" / HUB_FILE, arch="transformnet")
    hub.state.add_file(REPO, COMMIT, HUB_FILE, published)
    entries = [
        entry_for("simplecnn.tiny", shipped, SHIPPED_FILE, shipped=True, scores={"psnr": 21.5}),
        entry_for("transformnet.tiny", published, HUB_FILE, hub_repo=REPO, revision=COMMIT),
    ]
    manifest = write_manifest(tmp_path / "m.toml", entries, default="transformnet")
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(manifest))
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for var in ("HF_HUB_CACHE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    yield hub
    hub.close()


def _json(args):
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_json_shows_local_state_and_scores(env):
    records = {r["name"]: r for r in _json(["weights", "list", "--json"])}
    assert set(records) == {"simplecnn.tiny", "transformnet.tiny"}
    assert records["simplecnn.tiny"]["local"] == "package"
    assert records["simplecnn.tiny"]["scores"] == {"psnr": 21.5}
    assert records["transformnet.tiny"]["local"] is None
    assert records["transformnet.tiny"]["default_model"] is True
    assert records["transformnet.tiny"]["hub"] == f"hf://{REPO}/{HUB_FILE}@{COMMIT}"
    table = runner.invoke(app, ["weights", "list"], env={"COLUMNS": "80"})
    assert table.exit_code == 0 and "simplecnn.tiny" in table.stdout
    rows = [line for line in table.stdout.splitlines() if ".tiny" in line]
    assert "transformnet.tiny" in rows[1] and "model" in rows[1]  # the default model
    assert len(rows) == 2 and all(len(line) <= 80 for line in table.stdout.splitlines())
    assert "package" not in table.stdout  # the rest is in --json and 'weights show'
    shown = runner.invoke(app, ["weights", "show", "simplecnn.tiny"])
    assert (
        shown.exit_code == 0 and "psnr: 21.5" in shown.stdout and "local: package" in shown.stdout
    )
    as_json = json.loads(runner.invoke(app, ["weights", "show", "simplecnn", "--json"]).stdout)
    assert as_json == records["simplecnn.tiny"]
    unknown = runner.invoke(app, ["weights", "show", "nope"])
    assert unknown.exit_code == 2 and "not a pretrained model" in unknown.stderr


def test_download_path_verify_round_trip(env, tmp_path):
    result = runner.invoke(app, ["weights", "path", "transformnet"])
    assert result.exit_code != 0 and "deblur weights download transformnet.tiny" in result.stderr
    result = runner.invoke(app, ["weights", "download", "transformnet"])
    assert result.exit_code == 0, result.output
    path = runner.invoke(app, ["weights", "path", "transformnet.tiny"]).stdout.strip()
    assert path.startswith(str(tmp_path / "hf" / "hub")) and os.path.isfile(path)
    assert _json(["weights", "list", "--json"])[1]["local"] == "cache"
    requests = len(env.state.requests)
    result = runner.invoke(app, ["weights", "download", "--all"])
    assert result.exit_code == 0 and len(env.state.requests) == requests  # all cached
    result = runner.invoke(app, ["weights", "verify"])
    assert result.exit_code == 0, result.output
    assert result.stdout.count("ok") == 2
    # Tamper with the cached file: verify names it and fails; download repairs it.
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xfe")
    result = runner.invoke(app, ["weights", "verify"])
    assert result.exit_code == 1 and "mismatch" in result.stdout
    assert "transformnet.tiny" in result.stderr and HUB_FILE in result.stderr
    assert runner.invoke(app, ["weights", "download", "transformnet.tiny"]).exit_code == 0
    assert runner.invoke(app, ["weights", "verify", "transformnet"]).exit_code == 0


def test_download_batch_goes_on_past_a_failure(env):
    result = runner.invoke(app, ["weights", "download", "nope.x", "transformnet.tiny"])
    assert result.exit_code == 1
    assert "1 of 2 downloads failed" in result.stderr and "'nope.x'" in result.stderr
    assert "transformnet.tiny: " in result.stdout  # the good one was still downloaded


def test_download_needs_names_or_all(env):
    assert runner.invoke(app, ["weights", "download"]).exit_code == 2
    assert runner.invoke(app, ["weights", "download", "x", "--all"]).exit_code == 2


def test_models_pretrained_column_follows_the_manifest(env):
    records = {r["name"]: r["pretrained"] for r in _json(["models", "--json"])}
    assert records["simplecnn"] and records["transformnet"]
    assert not records["deblurgan"] and not records["edgenet"]


def test_empty_manifest_lists_nothing_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "e.toml", [])))
    assert _json(["weights", "list", "--json"]) == []
    for args in (["weights", "list"], ["weights", "download", "--all"], ["weights", "verify"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "no pretrained weights are published yet" in result.stdout
    result = runner.invoke(app, ["weights", "path", "deblurgan"])
    assert result.exit_code == 1 and "no pretrained weights are available yet" in result.stderr


def test_invalid_manifest_is_one_line(tmp_path, monkeypatch):
    bad = write_manifest(tmp_path / "bad.toml", [{"name": "simplecnn", "arch": "simplecnn"}])
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(bad))
    for args in (["weights", "list"], ["models"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1
        assert "missing required key" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_offline_subprocess_gives_one_line_not_a_traceback(env, tmp_path):
    """The real console script, offline with an empty cache: one line on stderr."""
    environ = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "deblurcli", "weights", "download", "transformnet"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert HUB_FILE in proc.stderr and "HF_HUB_OFFLINE" in proc.stderr
    assert env.state.requests == []


def test_verify_a_tampered_shipped_file_says_to_reinstall(env, tmp_path):
    with open(tmp_path / "pretrained" / SHIPPED_FILE, "ab") as f:
        f.write(b"x")
    result = runner.invoke(app, ["weights", "verify", "simplecnn"])
    assert result.exit_code == 1 and "mismatch" in result.stdout
    assert "reinstall deblurcli" in result.stderr and SHIPPED_FILE in result.stderr
