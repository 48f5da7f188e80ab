"""The self-describing safetensors checkpoint format."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from deblurcli import load_model
from deblurcli.archs import create, get_spec
from deblurcli.errors import CheckpointError
from deblurcli.weights import load_checkpoint, read_metadata, save_checkpoint
from tests._weights_helpers import write_manifest


@pytest.mark.parametrize("half", [False, True])
def test_round_trip_restores_arch_config_and_weights(tmp_path, half):
    model = create("transformnet", **get_spec("transformnet").tiny_config).eval()
    path = save_checkpoint(model, tmp_path / "model.safetensors", half=half, metadata={"note": "x"})
    meta = read_metadata(path)
    assert meta["deblurcli.arch"] == "transformnet" and meta["note"] == "x"
    loaded = load_checkpoint(path)
    assert loaded.arch_config == model.arch_config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 24, 24)
    with torch.no_grad():
        tol = 2e-3 if half else 0.0
        torch.testing.assert_close(loaded(x), model(x), atol=tol, rtol=tol)


def test_load_model_accepts_a_run_folder(tmp_path):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    save_checkpoint(model, tmp_path / "run" / "model.safetensors")
    assert load_model(tmp_path / "run").arch_name == "simplecnn"


def test_truncated_file_is_a_clear_error(tmp_path):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(path)


def test_missing_path_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="nope.safetensors: no such checkpoint file"):
        load_model(tmp_path / "nope.safetensors")
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "e.toml", [])))
    with pytest.raises(CheckpointError, match="no pretrained weights are available yet"):
        load_model(tmp_path / "nope.safetensors")


class _Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pickle_payload_in_pth_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"weight": _Payload()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, arch="simplecnn")
    assert "pwned" not in capsys.readouterr().out


def test_plain_pth_state_dict_loads_with_arch(tmp_path):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    loaded = load_checkpoint(tmp_path / "m.pth", arch="simplecnn", config=model.arch_config)
    torch.testing.assert_close(loaded.features[0].weight, model.features[0].weight)


def test_weights_for_another_arch_are_rejected(tmp_path):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    torch.save(model.state_dict(), tmp_path / "m.pth")
    with pytest.raises(CheckpointError, match="do not match transformnet"):
        load_checkpoint(tmp_path / "m.pth", arch="transformnet")


def test_saved_checkpoint_gets_ordinary_file_permissions(tmp_path):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    umask = os.umask(0)
    os.umask(umask)
    # shared like any result file, not private (0600) like a mkstemp temporary
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("config", ["{bad", "[1, 2]", '"text"'])
def test_malformed_config_metadata_is_a_clear_error(tmp_path, config):
    model = create("simplecnn", **get_spec("simplecnn").tiny_config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "model.safetensors"
    save_file(state, path, metadata={"deblurcli.arch": "simplecnn", "deblurcli.config": config})
    with pytest.raises(CheckpointError, match="not a JSON object"):
        load_checkpoint(path)


def test_loading_reads_no_init_the_checkpoint_replaces(tmp_path, monkeypatch, caplog):
    # Saved with encoder_weights="imagenet" (resnetencdec's init-only key): loading must not
    # look for ImageNet weights, so no "not in the torch cache" warning, and the weights are
    # the checkpoint's.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    config = {**get_spec("resnetencdec").tiny_config, "encoder_weights": "imagenet"}
    with caplog.at_level("WARNING"):
        model = create("resnetencdec", **config).eval()
    assert "not in the torch cache" in caplog.text  # the init was tried when building
    path = save_checkpoint(model, tmp_path / "model.safetensors")
    caplog.clear()
    with caplog.at_level("WARNING"):
        loaded = load_checkpoint(path)
    assert "torch cache" not in caplog.text
    assert loaded.arch_config["encoder_weights"] is None
    torch.testing.assert_close(loaded.stem[0].weight, model.stem[0].weight)
