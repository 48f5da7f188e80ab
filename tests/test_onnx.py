"""``deblur export`` and ONNX files in ``deblur restore``, checked with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from deblurcli.archs import create, get_spec, list_archs
from deblurcli.cli import app
from deblurcli.imageio import ImageData, read_image, write_image
from deblurcli.inference.onnx import OnnxModel, export_onnx
from deblurcli.weights import load_model

ort = pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
onnx = pytest.importorskip("onnx", reason="the onnx extra is not installed")

runner = CliRunner()
PHOTO = Path(__file__).resolve().parent.parent / "examples" / "blurry.png"


def photo_crop(h: int, w: int) -> np.ndarray:
    """A crop of the bundled example photo, H×W×3 float32 in [0, 1]."""
    return read_image(PHOTO).pixels[60 : 60 + h, 200 : 200 + w, :3].copy()


def _ort_run(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _nchw(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))[None]


@pytest.mark.parametrize("arch", list_archs())
def test_export_each_arch_matches_torch_on_a_photo_crop(tmp_path, arch):
    torch.manual_seed(0)
    model = create(arch, **get_spec(arch).tiny_config).eval()
    path = export_onnx(model, tmp_path / f"{arch}.onnx")
    multiple = get_spec(arch).size_multiple
    h, w = (-(-n // 32) * 32 for n in (72, 104))  # a size none of the archs needs to pad
    x = _nchw(photo_crop(h, w))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(_ort_run(path, x) - expected).max() <= 1e-3
    graph = onnx.load(str(path))
    meta = {p.key: p.value for p in graph.metadata_props}
    assert meta["deblurcli.arch"] == arch
    assert int(meta["deblurcli.size_multiple"]) == getattr(model, "size_multiple", multiple)
    assert max(op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[2:]] == ["height", "width"]  # dynamic H and W


def test_cli_export_of_a_shipped_model(tmp_path):
    out = tmp_path / "edgenet.onnx"
    result = runner.invoke(app, ["export", "edgenet", "-o", str(out)])
    assert result.exit_code == 0, result.output
    model = load_model("edgenet")
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["deblurcli.config"] and meta["deblurcli.precision"] == "fp32"
    x = _nchw(photo_crop(96, 128))
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    assert np.abs(_ort_run(out, x) - expected).max() <= 1e-3
    # fp16 weights: half the file, input and output still fp32
    half = tmp_path / "edgenet16.onnx"
    assert runner.invoke(app, ["export", "edgenet", "-o", str(half), "--fp16"]).exit_code == 0
    assert half.stat().st_size < 0.6 * out.stat().st_size
    assert np.abs(_ort_run(half, x) - expected).max() <= 2e-2
    # the file is never replaced silently, and the name must say what it is
    again = runner.invoke(app, ["export", "edgenet", "-o", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["export", "edgenet", "-o", str(tmp_path / "x.bin")])
    assert bad.exit_code == 2 and ".onnx" in bad.output


def _restore(tmp_path: Path, model: str, src: Path, name: str, *args: str) -> np.ndarray:
    out = tmp_path / name
    cmd = ["restore", str(src), "--model", model, "-o", str(out), "--device", "cpu", *args]
    result = runner.invoke(app, cmd)
    assert result.exit_code == 0, result.output
    return read_image(out).pixels


def test_restore_runs_an_onnx_file_like_the_torch_model(tmp_path):
    """Same engine (tiling, blending, I/O) on both backends: the same pixels, to one level."""
    torch.manual_seed(0)
    model = create("edgenet", **get_spec("edgenet").tiny_config).eval()
    path = export_onnx(model, tmp_path / "m.onnx")
    src = write_image(tmp_path / "in.png", ImageData(photo_crop(90, 140), bit_depth=16))
    torch_file = tmp_path / "m.safetensors"
    from deblurcli.weights import save_checkpoint

    save_checkpoint(model, torch_file)
    for args in (["--tile", "0"], ["--tile", "64", "--tile-overlap", "16"]):
        a = _restore(tmp_path, str(torch_file), src, "torch.png", *args, "--overwrite")
        b = _restore(tmp_path, str(path), src, "onnx.png", *args, "--overwrite")
        assert np.abs(a - b).max() <= 1 / 255
    onnx_model = OnnxModel(path)
    assert onnx_model.arch_name == "onnx:edgenet"
    assert onnx_model.arch_spec.size_multiple == model.size_multiple
    assert onnx_model.providers == ["CPUExecutionProvider"]


def test_eval_scores_an_onnx_file_like_the_torch_model(tmp_path):
    import json

    from deblurcli.weights import save_checkpoint

    torch.manual_seed(0)
    model = create("skipae", **get_spec("skipae").tiny_config).eval()
    onnx_file = export_onnx(model, tmp_path / "m.onnx")
    torch_file = save_checkpoint(model, tmp_path / "m.safetensors")
    for i in range(2):
        sharp = photo_crop(48, 64 + 8 * i)
        write_image(tmp_path / "sharp" / f"p{i}.png", ImageData(sharp))
        write_image(tmp_path / "blurred" / f"p{i}.png", ImageData(sharp[::-1].copy()))
    args = ["eval", "--sharp", str(tmp_path / "sharp"), "--blurred", str(tmp_path / "blurred")]
    result = runner.invoke(app, [*args, "-m", str(torch_file), "-m", str(onnx_file), "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["key"]: r for r in json.loads(result.stdout)["rows"]}
    torch_row, onnx_row = rows[torch_file.name], rows[onnx_file.name]
    assert onnx_row["images"] == 2 and onnx_row["params"] is None
    assert onnx_row["psnr"] == pytest.approx(torch_row["psnr"], abs=0.05)


def test_export_of_a_spandrel_checkpoint(tmp_path):
    pytest.importorskip("spandrel", reason="the zoo extra (spandrel) is not installed")
    from spandrel.architectures.NAFNet import NAFNet

    torch.manual_seed(0)
    net = NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save({"params": net.state_dict()}, tmp_path / "naf.pth")
    out = tmp_path / "naf.onnx"
    result = runner.invoke(app, ["export", str(tmp_path / "naf.pth"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    x = _nchw(photo_crop(50, 70))  # NAFNet pads inside the graph: any size
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    assert np.abs(_ort_run(out, x) - expected).max() <= 1e-3
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert meta["deblurcli.arch"] == "spandrel:NAFNet"


def test_a_broken_onnx_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf at all")
    result = runner.invoke(
        app, ["restore", str(PHOTO), "--model", str(bad), "-o", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert (
        len(result.output.strip().splitlines()) == 1
        and "onnxruntime cannot run it" in result.output
    )
