"""CPU inference speed settings: native-bf16 detection, the auto precision policy, fp16 on the
CPU, and the thread count (issue 15)."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from typer.testing import CliRunner

from deblurcli.archs import create, get_spec
from deblurcli.archs._blocks import ReflectionPad
from deblurcli.cli import app
from deblurcli.errors import ManifestError, UsageError
from deblurcli.inference import batch as batch_mod
from deblurcli.inference import device as dev_mod
from deblurcli.inference import engine as engine_mod
from deblurcli.inference import narrow_conv, resolve_precision, restore, restore_tensor
from deblurcli.inference.fold import fold_batchnorm
from deblurcli.inference.narrow_conv import narrow_convs, split_narrow_convs, splittable
from deblurcli.weights import list_pretrained, load_manifest, load_model, save_checkpoint
from tests._weights_helpers import entry_for, tiny_checkpoint, write_manifest
from tests.conftest import natural_image

CPU = torch.device("cpu")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _tiny(arch: str = "simplecnn", cpu_bf16: bool | None = None) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create(arch, **get_spec(arch).tiny_config).eval()
    if cpu_bf16 is not None:
        model.cpu_bf16 = cpu_bf16
    return model


def _u8(h: int, w: int) -> np.ndarray:
    return np.rint(natural_image(h, w) * 255).astype(np.uint8)


def _cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith(("flags", "Features")))
    return set(line.split(":", 1)[1].split())


@pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="needs Linux /proc/cpuinfo")
def test_native_bf16_probe_agrees_with_the_cpu_flags():
    """torch's answer on this machine matches what the kernel says the CPU can do."""
    native = bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})
    assert dev_mod.cpu_bf16_native() == native


@pytest.mark.parametrize(
    ("native", "record", "expected"),
    [
        (True, True, torch.bfloat16),  # CPU can, manifest says safe
        (True, False, None),  # measured and failed the 0.05 dB check
        (True, None, None),  # never measured (e.g. a user's own checkpoint)
        (False, True, None),  # CPU without native bf16
    ],
)
def test_auto_picks_bf16_only_on_native_cpu_for_a_checked_model(
    monkeypatch, native, record, expected
):
    monkeypatch.setattr(dev_mod, "cpu_bf16_native", lambda: native)
    assert resolve_precision("auto", CPU, _tiny(cpu_bf16=record)) is expected
    assert dev_mod.channels_last(CPU, expected) is (expected is torch.bfloat16)


def test_auto_stays_fp32_when_the_spec_says_bf16_is_unsafe(monkeypatch):
    monkeypatch.setattr(dev_mod, "cpu_bf16_native", lambda: True)
    model = _tiny(cpu_bf16=True)
    monkeypatch.setattr(model, "arch_spec", get_spec("simplecnn").__class__(
        **{**get_spec("simplecnn").__dict__, "bf16_safe": False}
    ))  # fmt: skip
    assert resolve_precision("auto", CPU, model) is None
    assert resolve_precision("auto", torch.device("mps"), _tiny(cpu_bf16=True)) is None


def test_fp16_on_the_cpu_is_refused_in_one_line():
    with pytest.raises(UsageError, match="fp16 is not supported on the CPU"):
        resolve_precision("fp16", CPU, _tiny())


@pytest.mark.skipif(not dev_mod.cpu_bf16_native(), reason="CPU without native bf16")
def test_checked_model_really_runs_bf16_channels_last_on_this_cpu():
    model = _tiny("edgenet", cpu_bf16=True)
    seen: list[tuple[torch.dtype, bool]] = []
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(
        lambda _m, args, out: seen.append(
            (out.dtype, args[0].is_contiguous(memory_format=torch.channels_last))
        )
    )
    x = torch.from_numpy(natural_image(64, 80)).permute(2, 0, 1).contiguous()
    fast = restore_tensor(model, x, tile=0, device="cpu", precision="auto")
    assert seen[-1] == (torch.bfloat16, True)
    exact = restore_tensor(model, x, tile=0, device="cpu", precision="fp32")
    assert seen[-1][0] == torch.float32
    assert fast.dtype == torch.float32 and float((fast - exact).abs().mean()) < 2 / 255


def _manifest_entry(tmp_path: Path, **extra) -> Path:
    _, data = tiny_checkpoint(tmp_path / "simplecnn.safetensors")
    entry = entry_for("simplecnn", data, "simplecnn.safetensors", shipped=True, **extra)
    return write_manifest(tmp_path / "m.toml", [entry])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"cpu_bf16": True}, "needs cpu_bf16_psnr_delta within"),
        ({"cpu_bf16": True, "cpu_bf16_psnr_delta": -0.08}, "needs cpu_bf16_psnr_delta within"),
        ({"cpu_bf16": "yes"}, "'cpu_bf16' must be a bool"),
        ({"cpu_bf16": False, "cpu_bf16_psnr_delta": True}, "must be a number"),
    ],
)
def test_cpu_bf16_record_is_validated(tmp_path, extra, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_manifest_entry(tmp_path, **extra))


def test_loaded_model_carries_its_manifest_verdict(tmp_path, monkeypatch):
    path = _manifest_entry(tmp_path, cpu_bf16=True, cpu_bf16_psnr_delta=-0.01)
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(path))
    (tmp_path / "pretrained").mkdir()
    (tmp_path / "simplecnn.safetensors").rename(tmp_path / "pretrained" / "simplecnn.safetensors")
    (entry,) = load_manifest(path).entries
    assert entry.cpu_bf16 is True and entry.cpu_bf16_psnr_delta == -0.01
    model = load_model("simplecnn")
    assert model.cpu_bf16 is True
    monkeypatch.setattr(dev_mod, "cpu_bf16_native", lambda: True)
    assert resolve_precision("auto", CPU, model) is torch.bfloat16
    # The same file loaded by path has no record, so it stays fp32.
    plain = load_model(tmp_path / "pretrained" / "simplecnn.safetensors")
    assert resolve_precision("auto", CPU, plain) is None


def test_every_shipped_model_has_a_measured_verdict():
    for entry in list_pretrained():
        if entry.shipped:
            assert entry.cpu_bf16 is not None and entry.cpu_bf16_psnr_delta is not None
            assert entry.cpu_bf16 == (abs(entry.cpu_bf16_psnr_delta) <= 0.05)


def _fake_topology(root: Path, cores: list[tuple[int, int]]) -> Path:
    for cpu, core in enumerate(cores):
        base = root / f"cpu{cpu}" / "topology"
        base.mkdir(parents=True)
        (base / "physical_package_id").write_text("0\n")
        (base / "core_id").write_text(f"{core}\n")
    return root


def test_physical_cores_counts_hyperthread_siblings_once(tmp_path, monkeypatch):
    monkeypatch.setattr(dev_mod.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    smt = _fake_topology(tmp_path / "smt", [0, 1, 0, 1])  # 2 cores × 2 threads
    assert dev_mod.physical_cores(smt) == 2
    plain = _fake_topology(tmp_path / "plain", [0, 1, 2, 3])
    assert dev_mod.physical_cores(plain) == 4
    assert dev_mod.physical_cores(tmp_path / "missing") == 4  # no sysfs: count the CPUs


def test_default_threads_share_cores_among_torchrun_ranks(monkeypatch):
    monkeypatch.setattr(dev_mod, "physical_cores", lambda: 8)
    assert dev_mod.default_threads() == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert dev_mod.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert dev_mod.default_threads() == 1


@pytest.fixture
def small_job(tmp_path) -> tuple[Path, Path]:
    image = tmp_path / "in.png"
    Image.fromarray(_u8(48, 64)).save(image)
    ckpt = save_checkpoint(_tiny(), tmp_path / "model.safetensors")
    return image, ckpt


def test_restore_threads_option_sets_torch_threads(small_job, tmp_path, monkeypatch):
    image, ckpt = small_job
    args = ["restore", str(image), "-m", str(ckpt), "--device", "cpu", "--json"]
    torch.set_num_threads(2)
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "a"), "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(dev_mod, "physical_cores", lambda: 3)
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 3  # default: one per physical core
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "c"), "--threads", "0"])
    assert result.exit_code == 2 and not (tmp_path / "c").exists()


def test_eval_threads_option_sets_torch_threads(tmp_path):
    sharp = _u8(48, 64)
    for folder in ("sharp", "blurred"):
        (tmp_path / folder).mkdir()
        Image.fromarray(sharp).save(tmp_path / folder / "a.png")
    torch.set_num_threads(2)
    result = runner.invoke(
        app,
        ["eval", "-m", "identity", "--sharp", str(tmp_path / "sharp"),
         "--blurred", str(tmp_path / "blurred"), "--threads", "1", "--json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == 1


def test_fp16_restore_on_the_cpu_is_one_line_and_exit_2(small_job, tmp_path):
    image, ckpt = small_job
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "deblurcli", "restore", str(image), "-m", str(ckpt),
           "-o", str(out), "--device", "cpu", "--precision", "fp16"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "fp16 is not supported on the CPU" in lines[0]
    assert "Traceback" not in res.stderr and not list(out.glob("*"))


def test_restore_threads_in_a_real_process(small_job, tmp_path):
    """The count reaches torch in a fresh interpreter too (no state shared with pytest)."""
    image, ckpt = small_job
    code = (
        "import sys, torch; from deblurcli.cli import app\n"
        "try:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print(torch.get_num_threads())"
    )
    args = ["restore", str(image), "-m", str(ckpt), "-o", str(tmp_path / "o"),
            "--device", "cpu", "--threads", "1", "--json"]  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True)
    summary, threads = res.stdout.strip().splitlines()[-2:]
    assert json.loads(summary)["done"] and threads == "1", res.stderr


def _with_batchnorm_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial running statistics, so a wrong fold would show."""
    gen = torch.Generator().manual_seed(0)
    for mod in model.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            for t, lo, hi in ((mod.running_mean, -0.5, 0.5), (mod.running_var, 0.5, 2.0),
                              (mod.weight, 0.5, 1.5), (mod.bias, -0.2, 0.2)):  # fmt: skip
                t.data.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return model


def test_fold_batchnorm_is_exact_and_removes_every_norm():
    model = _with_batchnorm_stats(_tiny("resnetencdec"))
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.from_numpy(natural_image(64, 96)).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        before = model(x)
    assert fold_batchnorm(model) == norms > 0  # Sequentials and the traced ResNet blocks
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, atol=1e-5, rtol=0)


def test_fold_batchnorm_leaves_unsafe_pairs_alone():
    class Shared(torch.nn.Module):  # the conv output also feeds the sum: no fold
        def __init__(self):
            super().__init__()
            self.conv, self.bn = torch.nn.Conv2d(3, 3, 1), torch.nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = _with_batchnorm_stats(Shared()).eval()
    assert fold_batchnorm(model) == 0 and isinstance(model.bn, torch.nn.BatchNorm2d)
    training = _with_batchnorm_stats(_tiny("resnetencdec")).train()
    assert fold_batchnorm(training) == 0  # training-mode norms use batch statistics


def test_restore_folds_the_model_it_loads_and_output_is_unchanged(tmp_path):
    model = _with_batchnorm_stats(_tiny("resnetencdec"))
    ckpt = save_checkpoint(model, tmp_path / "r.safetensors")
    image = tmp_path / "in.png"
    Image.fromarray(_u8(64, 96)).save(image)
    summary = restore(image, ckpt, tmp_path / "out", device="cpu", precision="fp32", tile=0)
    assert summary.ok
    x = torch.from_numpy(np.asarray(Image.open(image), np.float32) / 255).permute(2, 0, 1)
    expected = _u8_tensor(restore_tensor(model, x, tile=0, device="cpu", precision="fp32"))
    got = np.asarray(Image.open(tmp_path / "out" / "in.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    restore(image, model, tmp_path / "out2", device="cpu", precision="fp32", tile=0)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # caller's: kept


def _u8_tensor(t: torch.Tensor) -> np.ndarray:
    return np.rint(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def test_reflection_pad_keeps_bf16_under_autocast_and_matches_torch():
    x = torch.rand(1, 4, 9, 11).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = ReflectionPad(2)(x), torch.nn.ReflectionPad2d(2)(x)
    assert theirs.dtype == torch.float32  # autocast's fp32 policy: the copies we avoid
    assert ours.dtype == torch.bfloat16 and ours.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(ours.float(), theirs, atol=0, rtol=0)


# ------------------------------------------------ narrow convs, upsampling, freed memory


def _bf16_reference(conv: torch.nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The conv in fp64 on bf16-rounded input and weights: what a bf16 kernel approximates."""
    w, b = (t.detach().to(torch.bfloat16).double() for t in (conv.weight, conv.bias))
    return F.conv2d(x.to(torch.bfloat16).double(), w, b, conv.stride, conv.padding)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"), [(7, 1, 0), (7, 2, 3), (9, 1, 4), ((5, 3), (2, 1), (1, 2))]
)
def test_split_narrow_conv_matches_the_conv(kernel, stride, padding):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(32, 3, kernel, stride, padding).eval()
    (found,) = narrow_convs(torch.nn.Sequential(conv))
    x = torch.rand(2, 32, 23, 29).contiguous(memory_format=torch.channels_last)
    keys = list(conv.state_dict())
    with torch.no_grad(), split_narrow_convs([found]):
        plain = conv(x)  # fp32 input: the conv as it was, bit for bit
        split = conv(x.to(torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast_split = conv(x)
        direct = conv._conv_forward(x.to(torch.bfloat16), conv.weight.to(torch.bfloat16),
                                    conv.bias.to(torch.bfloat16))  # fmt: skip
    assert "forward" not in conv.__dict__ and list(conv.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(plain, conv(x), atol=0, rtol=0)
    reference = _bf16_reference(conv, x)
    assert split.dtype == autocast_split.dtype == torch.bfloat16
    assert split.shape == autocast_split.shape == reference.shape
    torch.testing.assert_close(split, autocast_split, atol=0, rtol=0)
    # Within a few bf16 roundings of the exact result, like the unsplit bf16 conv.
    tol = 4 * float((direct.double() - reference).abs().max()) + 1e-3
    assert float((split.double() - reference).abs().max()) <= tol


@pytest.mark.parametrize(
    "conv",
    [
        torch.nn.Conv2d(32, 16, 7),  # a full output block: nothing to gain
        torch.nn.Conv2d(32, 3, 1),  # 1×1
        torch.nn.Conv2d(4, 3, 7),  # too few inputs for the split to pay
        torch.nn.Conv2d(32, 4, 7, groups=2),
        torch.nn.Conv2d(32, 3, 7, dilation=2),
        torch.nn.Conv2d(32, 3, 7, padding="same"),
        torch.nn.Conv2d(32, 3, 7, padding=3, padding_mode="reflect"),
    ],
)
def test_convs_that_are_not_split(conv):
    assert not splittable(conv) and narrow_convs(torch.nn.Sequential(conv)) == []


def _wide_tail_edgenet() -> torch.nn.Module:
    """Tiny edgenet whose 7×7 RGB tail (16 → 3) is wide enough to be split."""
    torch.manual_seed(0)
    config = {**get_spec("edgenet").tiny_config, "deblur_base": 16}
    return create("edgenet", **config).eval()


@pytest.mark.parametrize("tile", [0, 64])
def test_bf16_restore_splits_the_tail_and_stays_close_to_fp32(tile, monkeypatch):
    model = _wide_tail_edgenet()
    (tail,) = narrow_convs(model)
    assert tail is model.deblurnet.tail[1]
    calls = []
    real = narrow_conv._split_forward
    monkeypatch.setattr(narrow_conv, "_split_forward", lambda c, x: calls.append(1) or real(c, x))
    x = torch.from_numpy(natural_image(80, 112)).permute(2, 0, 1).contiguous()
    exact = restore_tensor(model, x, tile=tile, device="cpu", precision="fp32")
    assert not calls  # fp32 never splits
    fast = restore_tensor(model, x, tile=tile, tile_overlap=32, device="cpu", precision="bf16")
    assert len(calls) >= (1 if tile == 0 else 2)
    assert "forward" not in tail.__dict__  # the caller's model is left as it was
    assert float((fast - exact).abs().mean()) < 1 / 255
    monkeypatch.setattr(narrow_conv, "_split_forward", real)
    unsplit = _unsplit_bf16(model, x, tile, monkeypatch)
    assert float((fast - unsplit).abs().mean()) < 0.25 / 255


def _unsplit_bf16(model, x, tile, monkeypatch) -> torch.Tensor:
    monkeypatch.setattr(engine_mod, "narrow_convs", lambda _m: [])
    return restore_tensor(model, x, tile=tile, tile_overlap=32, device="cpu", precision="bf16")


def test_cpu_without_native_bf16_runs_auto_in_fp32_unsplit(monkeypatch):
    """The fallback: auto on a CPU without native bf16 is the plain fp32 forward, bit for bit."""
    monkeypatch.setattr(dev_mod, "cpu_bf16_native", lambda: False)
    model = _wide_tail_edgenet()
    model.cpu_bf16 = True
    monkeypatch.setattr(narrow_conv, "_split_forward", lambda *_a: pytest.fail("split in fp32"))
    x = torch.from_numpy(natural_image(64, 80)).permute(2, 0, 1).contiguous()
    auto = restore_tensor(model, x, tile=0, device="cpu", precision="auto")
    with torch.no_grad():
        plain = model(x[None])[0].clamp(0, 1)
    torch.testing.assert_close(auto, plain, atol=0, rtol=0)


_FAULTS = """
import resource, sys, torch
from deblurcli.inference.device import reuse_freed_memory
print(reuse_freed_memory() if sys.argv[1] == "1" else False)
for _ in range(4):  # 64 MiB, freed at once; the heap settles after a few (alignment slack)
    torch.ones(16 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.ones(16 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="a glibc malloc setting")
def test_reuse_freed_memory_stops_page_faults_on_reallocation():
    faults = {}
    for flag in ("0", "1"):
        res = subprocess.run([sys.executable, "-c", _FAULTS, flag], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
        agreed, count = res.stdout.split()
        faults[flag] = int(count)
        assert agreed == ("True" if flag == "1" else "False"), res.stderr
    assert faults["0"] > 4 * 4000  # 4 × 64 MiB of fresh 4 KiB pages (fewer with huge pages)
    assert faults["1"] < faults["0"] / 3  # at most one of the four still grows the heap


def test_cpu_restore_keeps_freed_memory(small_job, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(batch_mod, "reuse_freed_memory", lambda: calls.append(1) or True)
    image, ckpt = small_job
    assert restore(image, ckpt, tmp_path / "o", device="cpu").ok
    assert calls == [1]
