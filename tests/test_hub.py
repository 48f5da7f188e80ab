"""The real huggingface_hub download and cache paths, against a loopback Hub.

Nothing is mocked: huggingface_hub's ``hf_hub_download`` talks HTTP to a local server that
answers the way the Hub's resolve endpoint does (see ``_loopback_hub.py``).
"""

from __future__ import annotations

import hashlib
import os
import time

import pytest
import torch
from _loopback_hub import LoopbackHub
from _weights_helpers import COMMIT, REPO, entry_for, tiny_checkpoint, write_manifest

from deblurcli.errors import ChecksumError, WeightsUnavailableError
from deblurcli.weights import load_model, resolve_weights
from deblurcli.weights.hub import cache_dir

FILE = "simplecnn-tiny.safetensors"


@pytest.fixture
def published(tmp_path, hub):
    """A tiny simplecnn published on the loopback Hub at COMMIT, and a manifest pinning it."""
    model, data = tiny_checkpoint(tmp_path / "src" / FILE)
    hub.state.add_file(REPO, COMMIT, FILE, data)
    entry = entry_for("simplecnn.tiny", data, FILE, hub_repo=REPO, revision=COMMIT)
    return model, data, write_manifest(tmp_path / "m.toml", [entry])


def _resolve_requests(hub):
    """Requests for weights (HEAD resolve + GET blob), not the library's own side calls."""
    return [r for r in hub.state.requests if "/resolve/" in r[1] or r[1].startswith("/blobs/")]


def test_download_then_cache_then_no_request(tmp_path, hub, published):
    model, data, manifest = published
    path = resolve_weights("simplecnn", manifest=manifest)
    assert path.read_bytes() == data
    assert str(path).startswith(str(tmp_path / "hf" / "hub"))  # HF_HOME decides the cache
    assert COMMIT in str(path)  # the pinned revision's snapshot
    methods = [m for m, _ in _resolve_requests(hub)]
    assert methods.count("GET") == 1 and methods.count("HEAD") >= 1
    before = len(hub.state.requests)
    loaded = load_model("simplecnn.tiny", manifest=manifest)
    assert len(hub.state.requests) == before  # served from the cache: no request at all
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=3e-3, rtol=3e-3)


def test_prepared_cache_works_offline(tmp_path, hub, monkeypatch):
    """A cache laid out by hand the way huggingface_hub does, no server content at all."""
    _, data = tiny_checkpoint(tmp_path / "src" / FILE)
    sha = hashlib.sha256(data).hexdigest()
    repo_dir = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "blobs" / sha).write_bytes(data)
    (repo_dir / "snapshots" / COMMIT).mkdir(parents=True)
    os.symlink(f"../../blobs/{sha}", repo_dir / "snapshots" / COMMIT / FILE)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(COMMIT)
    entry = entry_for("simplecnn", data, FILE, hub_repo=REPO, revision=COMMIT)
    manifest = write_manifest(tmp_path / "m.toml", [entry])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_model("simplecnn", manifest=manifest).arch_name == "simplecnn"
    assert load_model(f"hf://{REPO}/{FILE}", manifest=manifest).arch_name == "simplecnn"
    assert hub.state.requests == []


def test_offline_with_nothing_cached_is_one_clear_line(hub, published, monkeypatch):
    _, _, manifest = published
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError) as info:
        load_model("simplecnn", manifest=manifest)
    message = str(info.value)
    assert "\n" not in message
    assert FILE in message and "HF_HUB_OFFLINE" in message
    assert "deblur weights download simplecnn.tiny" in message and "pass model PATH" in message
    assert "pass --model PATH" in info.value.for_cli()
    assert hub.state.requests == []


def test_unreachable_hub_is_one_clear_line(tmp_path, published, monkeypatch):
    _, _, manifest = published
    dead = LoopbackHub()
    dead.close()  # nothing listens on its port any more: connection refused
    monkeypatch.setenv("HF_ENDPOINT", dead.endpoint)
    # huggingface_hub would retry a refused connection with backoff (about 24 s of sleeps);
    # the connectivity check answers from the cache at once instead.
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    with pytest.raises(WeightsUnavailableError, match="Hub cannot be reached") as info:
        resolve_weights("simplecnn", manifest=manifest)
    assert "\n" not in str(info.value) and FILE in str(info.value)
    assert not waits  # no retry backoff


def test_corrupt_cache_entry_is_downloaded_again_once(hub, published):
    _, data, manifest = published
    path = resolve_weights("simplecnn", manifest=manifest)
    path.write_bytes(b"\0" * len(data))  # follows the snapshot symlink into the blob
    gets = [m for m, _ in _resolve_requests(hub)].count("GET")
    assert load_model("simplecnn", manifest=manifest).arch_name == "simplecnn"
    assert [m for m, _ in _resolve_requests(hub)].count("GET") == gets + 1
    assert path.read_bytes() == data


def test_corrupt_cache_entry_offline_is_a_checksum_error(hub, published, monkeypatch):
    _, data, manifest = published
    path = resolve_weights("simplecnn", manifest=manifest)
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ChecksumError, match=f"{FILE}.*HF_HUB_OFFLINE.*download simplecnn.tiny"):
        load_model("simplecnn", manifest=manifest)


def test_hub_file_that_differs_from_the_manifest_is_refused(tmp_path, hub):
    _, data = tiny_checkpoint(tmp_path / "src" / FILE)
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    hub.state.add_file(REPO, COMMIT, FILE, tampered)
    entry = entry_for("simplecnn", data, FILE, hub_repo=REPO, revision=COMMIT)
    manifest = write_manifest(tmp_path / "m.toml", [entry])
    with pytest.raises(ChecksumError, match=f"{FILE}: sha256 does not match .*report it"):
        load_model("simplecnn", manifest=manifest)
    assert [m for m, _ in _resolve_requests(hub)].count("GET") == 2  # downloaded again once


def test_hf_uri_outside_the_manifest(tmp_path, hub):
    _, data = tiny_checkpoint(tmp_path / "src" / "model.safetensors", arch="transformnet")
    hub.state.add_file(REPO, COMMIT, "model.safetensors", data)
    hub.state.add_file(REPO, COMMIT, "sub/other.safetensors", data)
    assert load_model(f"hf://{REPO}").arch_name == "transformnet"  # main → COMMIT
    assert load_model(f"hf://{REPO}/sub/other.safetensors@{COMMIT}").arch_name == "transformnet"
    assert cache_dir() == tmp_path / "hf" / "hub"
    with pytest.raises(WeightsUnavailableError, match="no such file in the repository"):
        load_model(f"hf://{REPO}/missing.safetensors")
    with pytest.raises(WeightsUnavailableError, match="no such Hub repository"):
        load_model("hf://nobody/nothing")
    with pytest.raises(WeightsUnavailableError, match="no such revision"):
        load_model(f"hf://{REPO}@{'f' * 40}")


def test_hub_checkpoint_with_config_json_instead_of_metadata(tmp_path, hub):
    import json

    from safetensors.torch import save_file

    from deblurcli.archs import create, get_spec

    cfg = get_spec("simplecnn").tiny_config
    model = create("simplecnn", **cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w")
    hub.state.add_file(REPO, COMMIT, "model.safetensors", (tmp_path / "w").read_bytes())
    sidecar = json.dumps({"arch": "simplecnn", "config": cfg}).encode()
    hub.state.add_file(REPO, COMMIT, "config.json", sidecar)
    loaded = load_model(f"hf://{REPO}@{COMMIT}")
    assert loaded.arch_name == "simplecnn" and loaded.arch_config == model.arch_config


def test_metadata_wait_follows_hf_hub_etag_timeout(monkeypatch):
    from deblurcli.weights import hub as hub_module

    monkeypatch.delenv("HF_HUB_ETAG_TIMEOUT", raising=False)
    assert hub_module._metadata_timeout() == hub_module.CONNECT_TIMEOUT
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "12.5")
    assert hub_module._metadata_timeout() == 12.5
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "soon")
    assert hub_module._metadata_timeout() == hub_module.CONNECT_TIMEOUT
