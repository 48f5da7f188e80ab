"""The adversarial suite (issue 14): bad files, bad options, kills, concurrent runs, full and
read-only disks, tampered weights and photos. Each test is one probe; each defect of the issue
has at least one probe that fails without its fix. Tiny images and widths keep it fast.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import natural_image
from PIL import Image
from test_photo_pool import sources  # noqa: F401  (the fake .deb/.whl photo sources fixture)
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.errors import UsageError
from deblurcli.imageio import ImageData, is_partial_file, looks_complete, write_image
from deblurcli.inference.batch import restore
from deblurcli.locks import FolderBusyError, output_lock
from tests._procs import alive, descendants

ROOT = Path(__file__).resolve().parents[1]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
LINUX = sys.platform.startswith("linux") and Path("/proc/self/stat").exists()
runner = CliRunner()


# ----------------------------------------------------------------------------- helpers
def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _cmd(*args: object) -> list[str]:
    return [sys.executable, "-m", "deblurcli", *map(str, args)]


def _run(*args: object, fsize: int | None = None, timeout: int = 120):
    """The real CLI in a subprocess; ``fsize`` caps file sizes (a full disk, unprivileged)."""

    def limit() -> None:  # Python ignores SIGXFSZ, so an oversized write fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    return subprocess.run(
        _cmd(*args),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit if fsize is not None else None,
    )


def _invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line(code: int, stderr: str, exit_code: int | tuple[int, ...] = (1, 2)) -> str:
    """A user error: the expected exit code, no traceback, exactly one 'error:' line."""
    codes = exit_code if isinstance(exit_code, tuple) else (exit_code,)
    assert code in codes, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def _assert_refused(result, exit_code: int | tuple[int, ...] = (1, 2)) -> None:
    """A CliRunner result that is a clean refusal (typer's own usage box counts)."""
    codes = exit_code if isinstance(exit_code, tuple) else (exit_code,)
    assert result.exit_code in codes, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output


def _png(path: Path, seed: int = 0, size: int = 24) -> Path:
    return write_image(path, ImageData(natural_image(size, size, seed=seed)))


def _photos(folder: Path, n: int, size: int = 24) -> Path:
    for i in range(n):
        _png(folder / f"p{i:02d}.png", seed=i, size=size)
    return folder


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path (the byte-for-byte comparison)."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _partials(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if is_partial_file(p)]


def _wait_gone(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = alive(pids)
    for pid in left:  # never leave anything behind, even when the probe fails
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return left


@pytest.fixture
def quick_lock(monkeypatch) -> None:
    """In-process probes need not wait the lock's grace period for a holder to exit."""
    from deblurcli import locks

    monkeypatch.setattr(locks, "WAIT_SECONDS", 0.1)


@contextlib.contextmanager
def _unreadable(folder: Path, monkeypatch) -> Iterator[None]:
    """Make ``folder`` unlistable: chmod 000, and for root (who ignores it) a refusing scandir."""
    folder.chmod(0)
    if IS_ROOT:
        real = os.scandir

        def scandir(path=".", *a, **kw):
            if Path(path).resolve() == folder.resolve():
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        yield
    finally:
        folder.chmod(0o755)


# ------------------------------------------------- defect 1: no input is ever overwritten
def _jpg_and_png(folder: Path) -> tuple[Path, Path]:
    png = _png(folder / "a.png", seed=1)
    jpg = write_image(folder / "a.jpg", ImageData(natural_image(24, 24, seed=2)))
    return jpg, png


@pytest.mark.parametrize("overwrite", [True, False])
def test_restore_never_writes_over_another_input(tmp_path, random_ckpt, overwrite):
    jpg, png = _jpg_and_png(tmp_path / "d")
    before = png.read_bytes(), jpg.read_bytes()
    args = ["restore", tmp_path / "d", "-o", tmp_path / "d", "--format", "png", "-m", random_ckpt]
    result = _invoke(*args, *(["--overwrite"] if overwrite else []), "--json")
    assert result.exit_code == 1
    assert (png.read_bytes(), jpg.read_bytes()) == before
    summary = json.loads(result.stdout)
    errors = {Path(f["path"]).name: f["error"] for f in summary["failed"]}
    assert "would overwrite the input" in errors["a.jpg"]  # reported, not silently skipped
    assert summary["done"] == [] and summary["skipped"] == []


def test_restore_two_folders_into_one_keeps_its_input(tmp_path, random_ckpt):
    a, b = _png(tmp_path / "XA" / "x.png", seed=1), _png(tmp_path / "XB" / "x.png", seed=2)
    before = b.read_bytes()
    result = _invoke("restore", a, b, "-o", tmp_path / "XB", "--overwrite", "-m", random_ckpt)
    assert result.exit_code == 1 and b.read_bytes() == before
    assert "would overwrite the input" in result.stderr


def test_restore_output_through_a_symlink_to_the_input_folder(tmp_path, random_ckpt):
    png = _png(tmp_path / "d" / "a.png")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    before = png.read_bytes()
    result = _invoke("restore", png, "-o", tmp_path / "link", "--overwrite", "-m", random_ckpt)
    assert result.exit_code == 1 and png.read_bytes() == before


# ----------------------------------------------------- defect 2: one writer per folder
def test_blur_into_a_locked_folder_is_one_line(tmp_path, quick_lock):
    src, out = _photos(tmp_path / "src", 2), tmp_path / "out"
    with output_lock(out, "test"):  # another open of the folder: a separate flock holder
        result = _invoke("blur", src, "-o", out, "-j", "1")
    line = _assert_one_line(result.exit_code, result.stderr, 1)
    assert "another deblur blur run is writing into this folder" in line
    assert not (out / "blurred").exists()


def test_two_concurrent_blur_runs_never_mix_seeds(tmp_path):
    src, out = _photos(tmp_path / "src", 12, size=32), tmp_path / "out"
    procs = [
        subprocess.Popen(
            _cmd("blur", src, "-o", out, "-j", "1", "--seed", seed, "--kind", "gaussian"),
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (3, 4)
    ]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    winners = [seed for seed, (code, _) in zip((3, 4), results, strict=True) if code == 0]
    assert len(winners) == 1, results  # the other is refused: locked, or other settings
    for code, err in results:
        if code != 0:
            _assert_one_line(code, err, (1, 2))
    clean = tmp_path / "clean"
    assert _invoke("blur", src, "-o", clean, "-j", "1", "--seed", winners[0], "--kind",
                   "gaussian").exit_code == 0  # fmt: skip
    assert _tree(out) == _tree(clean)


def test_lock_kinds(tmp_path, quick_lock):
    with output_lock(tmp_path):
        with pytest.raises(FolderBusyError), output_lock(tmp_path):
            pass
        with pytest.raises(FolderBusyError), output_lock(tmp_path, shared=True):
            pass
    with (
        output_lock(tmp_path, shared=True),  # the shards of one split run
        output_lock(tmp_path, shared=True),
        pytest.raises(FolderBusyError),
        output_lock(tmp_path),
    ):
        pass
    with output_lock(tmp_path):  # released: free again
        pass
    with (
        pytest.raises(FolderBusyError),
        output_lock(tmp_path / "new"),
        output_lock(tmp_path / "new"),
    ):
        pass
    assert not (tmp_path / "new").exists()  # a folder the lock made is removed while empty


def test_restore_and_train_into_a_locked_folder(tmp_path, random_ckpt, quick_lock):
    _png(tmp_path / "in" / "a.png")
    with output_lock(tmp_path / "out"):
        result = _invoke("restore", tmp_path / "in", "-o", tmp_path / "out", "-m", random_ckpt)
        assert result.exit_code == 1 and "another deblur restore run" in result.stderr
        assert not (tmp_path / "out" / "a.png").exists()
    with output_lock(tmp_path / "run"):
        args = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", tmp_path / "in"]
        result = _invoke(
            *args, "--degrade", "gaussian", "--out", tmp_path / "run", "--device", "cpu"
        )
        assert result.exit_code == 1 and "another deblur train run" in result.stderr
        assert list((tmp_path / "run").iterdir()) == []


# ------------------------------------------------- defect 3: workers die with their parent
_ORPHAN = """
import importlib.util, os, sys, time
spec = importlib.util.spec_from_file_location("_process", sys.argv[2])
p = importlib.util.module_from_spec(spec)
spec.loader.exec_module(p)  # the module alone: no torch import, a fast probe
if sys.argv[1] == "watchdog":
    p._set_parent_death_signal = lambda: False
parent = os.getpid()
if os.fork() == 0:
    p.die_with_parent(parent)
    time.sleep(60)
    os._exit(0)
time.sleep(60)
"""


@pytest.mark.skipif(not LINUX, reason="needs Linux /proc")
@pytest.mark.parametrize("mechanism", ["pdeathsig", "watchdog"])
def test_die_with_parent(tmp_path, mechanism):
    script = tmp_path / "orphan.py"
    script.write_text(_ORPHAN)
    module = ROOT / "deblurcli" / "_process.py"
    proc = subprocess.Popen([sys.executable, str(script), mechanism, str(module)], env=_env())
    deadline = time.monotonic() + 30
    while not descendants(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = descendants(proc.pid)
    time.sleep(0.3)  # let the child arm its death signal / watchdog
    proc.kill()
    proc.wait()
    assert children and not _wait_gone(children, 5)


@pytest.mark.skipif(not LINUX, reason="needs Linux /proc")
def test_blur_sigkill_workers_die_and_resume_is_byte_identical(tmp_path):
    src = _photos(tmp_path / "src", 60, size=64)
    out, clean = tmp_path / "out", tmp_path / "clean"
    args = ["blur", src, "-o", out, "-j", "2", "--kind", "motion", "--seed", "5"]
    proc = subprocess.Popen(_cmd(*args), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any((out / "blurred").glob("*.png")):
        time.sleep(0.02)
    workers = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert workers, "the pool had not started"
    assert len(list((out / "blurred").glob("*.png"))) < 60, "finished before the kill"
    assert not _wait_gone(workers, 3), "blur workers outlived their killed parent"
    again = _invoke(*args)
    assert again.exit_code == 0, again.output
    assert _invoke("blur", src, "-o", clean, "-j", "1", "--kind", "motion", "--seed",
                   "5").exit_code == 0  # fmt: skip
    assert _tree(out) == _tree(clean) and not _partials(out)


@pytest.mark.skipif(not LINUX, reason="needs Linux /proc")
def test_train_sigkill_dataloader_workers_die(tmp_path):
    data = _photos(tmp_path / "photos", 4, size=48)
    run = tmp_path / "run"
    args = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", data, "--degrade",
            "gaussian", "--patch-size", "32", "--batch-size", "2", "--workers", "2", "--steps",
            "100000", "--ckpt-every", "2", "--val-every", "100000", "--out", run, "--device",
            "cpu"]  # fmt: skip
    env = {**_env(), "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.Popen(_cmd(*args), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (run / "checkpoints" / "last.pt").exists():
        time.sleep(0.1)
    helpers = descendants(proc.pid)
    proc.kill()
    proc.wait()
    assert helpers, "no DataLoader workers were running"
    assert not _wait_gone(helpers, 4), "DataLoader workers outlived their killed trainer"


# ------------------------------------- defect 4: one line, never a traceback or partial file
@pytest.mark.parametrize(
    "option",
    [
        ["--lr", "nan"],
        ["--lr", "inf"],
        ["--lr", "-1"],
        ["--lr", "0"],
        ["--weight-decay", "nan"],
        ["--grad-clip", "-inf"],
    ],  # fmt: skip
)
def test_train_bad_numbers_are_one_line(tmp_path, option):
    data = _photos(tmp_path / "photos", 2)
    args = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", data, "--degrade"]
    result = _invoke(*args, "gaussian", "--out", tmp_path / "run", *option)
    _assert_refused(result, 2)
    assert option[0] in result.stderr
    assert not (tmp_path / "run" / "config.json").exists()


@pytest.mark.parametrize("command", ["blur", "restore", "train"])
def test_full_disk_is_one_line_without_partial_files(tmp_path, random_ckpt, command):
    """A full disk simulated with RLIMIT_FSIZE: works unprivileged, on every CI runner."""
    src, out = _photos(tmp_path / "src", 6, size=64), tmp_path / "out"
    args = {
        "blur": ["blur", src, "-o", out, "-j", "1", "--kind", "gaussian"],
        "restore": ["restore", src, "-o", out, "-m", random_ckpt],
        "train": [
            "train",
            "--arch",
            "simplecnn",
            "--width",
            "tiny",
            "--data",
            src,
            "--degrade",
            "gaussian",
            "--patch-size",
            "32",
            "--steps",
            "2",
            "--workers",
            "0",
            "--out",
            out,
            "--device",
            "cpu",
        ],  # fmt: skip
    }[command]
    proc = _run(*args, fsize=2000)
    line = _assert_one_line(proc.returncode, proc.stderr, 1)
    assert f"cannot write {out}" in line and "File too large" in line
    assert not _partials(out)


@contextlib.contextmanager
def _mounted_tmpfs(folder: Path, options: str, why: str) -> Iterator[Path]:
    """A real tmpfs mounted with ``options`` on ``folder`` for the block; skips if it cannot."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"{why}: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def small_tmpfs(tmp_path) -> Iterator[Path]:
    """A real 300 KiB tmpfs; only where the test may mount one (root, Linux)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    if not IS_ROOT or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root; the RLIMIT_FSIZE probe covers a full disk")
    with _mounted_tmpfs(mount, "size=300k", "cannot mount a tmpfs here"):
        yield mount


def test_real_full_tmpfs_blur(tmp_path, small_tmpfs):
    src = _photos(tmp_path / "src", 12, size=128)
    result = _invoke("blur", src, "-o", small_tmpfs / "out", "-j", "1", "--kind", "gaussian")
    line = _assert_one_line(result.exit_code, result.stderr, 1)
    assert "No space left on device" in line and str(small_tmpfs) in line
    assert not _partials(small_tmpfs)


@pytest.fixture
def readonly_dir(tmp_path) -> Iterator[Path]:
    """A folder nobody may write into: a read-only tmpfs for root, else chmod 555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if IS_ROOT:
        with _mounted_tmpfs(folder, "ro,size=64k", "root ignores chmod and no read-only mount"):
            yield folder
    else:
        folder.chmod(0o555)
        try:
            yield folder
        finally:
            folder.chmod(0o755)


@pytest.mark.parametrize("command", ["blur", "restore"])
def test_read_only_output(tmp_path, random_ckpt, readonly_dir, command):
    src = _photos(tmp_path / "src", 2)
    if command == "blur":
        result = _invoke("blur", src, "-o", readonly_dir, "-j", "1")
    else:
        result = _invoke("restore", src, "-o", readonly_dir, "-m", random_ckpt)
    _assert_refused(result, (1, 2))
    assert "Read-only file system" in result.stderr or "Permission denied" in result.stderr
    assert list(readonly_dir.iterdir()) == []


# -------------------------------------------- defect 5: --degrade on a paired folder
@pytest.mark.parametrize("layout", ["blur", "gopro"])
def test_degrade_on_a_paired_folder_uses_sharp_images_only(tmp_path, layout):
    from deblurcli.training.loaders import degrade_sources as _degrade_sources

    root = tmp_path / "pairs"
    seq = root if layout == "blur" else root / "train" / "GOPR01"
    blurred_dir = "blurred" if layout == "blur" else "blur"
    for i in range(3):
        _png(seq / "sharp" / f"{i}.png", seed=i)
        _png(seq / blurred_dir / f"{i}.png", seed=10 + i)
    examples = _degrade_sources(root)
    assert len(examples) == 3
    assert all(e.sharp.parent.name == "sharp" and e.blurred is None for e in examples)


# ----------------------------------------- defect 6: unreadable subfolders are reported
def test_restore_recursive_reports_an_unreadable_subfolder(tmp_path, random_ckpt, monkeypatch):
    _png(tmp_path / "in" / "a.png")
    _png(tmp_path / "in" / "locked" / "b.png")
    with _unreadable(tmp_path / "in" / "locked", monkeypatch):
        result = _invoke(
            "restore", tmp_path / "in", "-r", "-o", tmp_path / "out", "-m", random_ckpt
        )
    assert result.exit_code == 1
    assert "locked: cannot read this folder" in result.stderr
    assert (tmp_path / "out" / "a.png").is_file()


def test_blur_reports_an_unreadable_subfolder(tmp_path, monkeypatch):
    _photos(tmp_path / "src", 2)
    _png(tmp_path / "src" / "locked" / "b.png")
    with _unreadable(tmp_path / "src" / "locked", monkeypatch):
        result = _invoke("blur", tmp_path / "src", "-o", tmp_path / "out", "-j", "1")
    assert result.exit_code == 1 and "cannot read this folder" in result.stderr
    assert len(list((tmp_path / "out" / "blurred").glob("*.png"))) == 2


# ------------------------------------------------ defect 7: a suffix is a name part
@pytest.mark.parametrize("suffix", ["/../../ESCAPE", "..", "a/b", "x..y", "sub\\..\\x"])
def test_suffix_cannot_leave_the_folder(tmp_path, random_ckpt, suffix):
    png = _png(tmp_path / "d" / "x.png")
    result = _invoke("restore", png, "--suffix", suffix, "-m", random_ckpt)
    _assert_refused(result, 2)
    assert "--suffix" in result.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["d", "x.png"]


# -------------------------------------------- defect 8: junk outputs are redone on resume
def test_restore_resume_redoes_junk_outputs_byte_identical(tmp_path, random_ckpt):
    src = _photos(tmp_path / "src", 5)
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert _invoke("restore", src, "-o", clean, "-m", random_ckpt).exit_code == 0
    shutil.copytree(clean, out)
    (out / "p00.png").write_bytes(b"")  # empty
    (out / "p01.png").write_bytes((clean / "p01.png").read_bytes()[:-20])  # truncated
    (out / "p02.png").write_text("not an image")  # foreign
    (out / ".p00.png.abc123.part").write_bytes(b"half")  # a killed writer's temp file
    result = _invoke("restore", src, "-o", out, "-m", random_ckpt, "--json")
    summary = json.loads(result.stdout)
    assert result.exit_code == 0
    assert len(summary["done"]) == 3 and len(summary["skipped"]) == 2
    assert _tree(out) == _tree(clean)


def test_blur_resume_redoes_junk_outputs_byte_identical(tmp_path):
    src = _photos(tmp_path / "src", 4)
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert _invoke("blur", src, "-o", clean, "-j", "1", "--kind", "gaussian").exit_code == 0
    shutil.copytree(clean, out)
    (out / "blurred" / "p01.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # a header and nothing else
    (out / "sharp" / "p02.png").write_bytes((clean / "sharp" / "p02.png").read_bytes()[:-30])
    result = _invoke("blur", src, "-o", out, "-j", "1", "--kind", "gaussian", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["written"] == 2
    assert _tree(out) == _tree(clean)


def test_looks_complete_tells_whole_from_junk(tmp_path):
    good = _png(tmp_path / "a.png")
    jpg = write_image(tmp_path / "a.jpg", ImageData(natural_image(16, 16)))
    assert looks_complete(good) and looks_complete(jpg)
    for name, data in [("e.png", b""), ("t.png", good.read_bytes()[:-1]),
                       ("t.jpg", jpg.read_bytes()[:-2]), ("x.png", b"hello")]:  # fmt: skip
        (tmp_path / name).write_bytes(data)
        assert not looks_complete(tmp_path / name), name


# ------------------------------------------------------- defect 9: negative limits refused
@pytest.mark.parametrize("option", [["--max-pixels", "-1"], ["--tile-overlap", "-8"]])
def test_negative_limits_are_refused(tmp_path, random_ckpt, option):
    png = _png(tmp_path / "a.png")
    result = _invoke("restore", png, "-o", tmp_path / "out", "-m", random_ckpt, *option)
    _assert_refused(result, 2)
    assert not (tmp_path / "out").exists()


def test_negative_max_pixels_refused_by_the_api(tmp_path, random_ckpt):
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(UsageError, match="max_pixels must be >= 0"):
        restore(_png(tmp_path / "a.png"), random_ckpt, tmp_path / "out", max_pixels=-1)
    assert before == Image.MAX_IMAGE_PIXELS


# ---------------------------------------- defect 10: resume keeps the run's own settings
def test_resume_keeps_cadence_and_a_finished_resume_changes_nothing(tmp_path):
    data = _photos(tmp_path / "photos", 4, size=48)
    run = tmp_path / "run"
    base = ["train", "--arch", "simplecnn", "--width", "tiny", "--data", data, "--degrade",
            "gaussian", "--patch-size", "32", "--batch-size", "2", "--workers", "0", "--out",
            run, "--device", "cpu"]  # fmt: skip
    assert _invoke(*base, "--steps", "2", "--val-every", "1", "--ckpt-every", "1").exit_code == 0
    assert _invoke(*base, "--steps", "4", "--resume").exit_code == 0
    config = json.loads((run / "config.json").read_text())["config"]
    assert (config["val_every"], config["ckpt_every"]) == (1, 1)
    val_steps = [
        int(row.split(",")[0])
        for row in (run / "metrics.csv").read_text().splitlines()[1:]
        if ",val," in row
    ]
    assert val_steps == [1, 2, 3, 4]
    files = [p for p in run.rglob("*") if p.is_file()]
    stamp = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    time.sleep(0.01)
    done = _invoke(*base, "--steps", "4", "--resume", "--val-every", "7")
    assert done.exit_code == 0 and "already trained" in done.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == stamp
    assert sorted(p for p in run.rglob("*") if p.is_file()) == sorted(files)


# ------------------------------------------------- defect 11: verify NAME of a missing file
def test_weights_verify_a_missing_name_exits_1(tmp_path, monkeypatch):
    from _weights_helpers import COMMIT, REPO, entry_for, tiny_checkpoint, write_manifest

    _, data = tiny_checkpoint(tmp_path / "src" / "t.safetensors", arch="transformnet")
    entry = entry_for("transformnet.tiny", data, "t.safetensors", hub_repo=REPO, revision=COMMIT)
    monkeypatch.setenv("DEBLURCLI_MANIFEST", str(write_manifest(tmp_path / "m.toml", [entry])))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    result = _invoke("weights", "verify", "transformnet.tiny")
    assert result.exit_code == 1 and "not on this machine" in result.stderr
    assert _invoke("weights", "verify").exit_code == 0  # all: nothing local is not a failure


# ------------------------------------- tampered weights: one line, nothing loaded
@pytest.mark.parametrize("damage", ["truncate", "header", "empty", "pickle"])
def test_tampered_checkpoint_is_one_line(tmp_path, random_ckpt, damage):
    from deblurcli.errors import CheckpointError
    from deblurcli.weights import load_checkpoint

    png = _png(tmp_path / "a.png")
    bad = tmp_path / ("bad.pth" if damage == "pickle" else "bad.safetensors")
    data = random_ckpt.read_bytes()
    marker = tmp_path / "pwned"
    bad.write_bytes(
        {
            "truncate": data[: len(data) // 2],
            "header": b"\xff" * 16 + data[16:],
            "empty": b"",
            "pickle": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        }[damage]
    )
    if damage == "pickle":  # refused by the weights-only unpickler, code never runs
        with pytest.raises(CheckpointError, match="refused to load"):
            load_checkpoint(bad, arch="simplecnn")
    result = _invoke("restore", png, "-o", tmp_path / "out", "-m", bad)
    _assert_one_line(result.exit_code, result.stderr, 1)
    assert not marker.exists() and not (tmp_path / "out").exists()


# ----------------------------------- defect 12: tampered photos of the training pool
def test_tampered_photo_is_refetched_counted_and_never_prepared(tmp_path, sources):  # noqa: F811
    from test_photo_pool import default_photos, write_pool

    from deblurcli.data import photo_pool as pp

    pool = write_pool(tmp_path / "pool.toml", default_photos(sources))
    root = tmp_path / "root"
    fetch = ["data", "fetch", "--root", root, "--pool", pool, "--debs-dir", sources["debs"],
             "--wheels-dir", sources["wheels"]]  # fmt: skip
    assert _invoke(*fetch).exit_code == 0
    assert _invoke("data", "prepare", "--root", root, "--pool", pool).exit_code == 0
    raw = root / "raw" / "deb-a.png"
    raw.write_bytes(raw.read_bytes()[:-1] + b"\x00")  # tampered after the fetch
    listed = json.loads(_invoke("data", "list", "--root", root, "--pool", pool, "--json").stdout)
    assert {r["name"]: r["fetched"] for r in listed}["deb-a"] is False
    prepared = _invoke("data", "prepare", "--root", root, "--pool", pool)
    assert prepared.exit_code == 1 and "sha256" in prepared.stderr
    assert not (root / "prepared" / "train" / "deb-a.png").exists()
    again = _invoke(*fetch)
    assert again.exit_code == 0 and "(1 fetched, 3 already there)" in again.stdout
    assert all(s.fetched for s in pp.pool_status(root, pool=pool))


# -------------------------------------------- defect 13: killed benchmark builds cleaned
def test_benchmark_build_removes_stale_build_folders(tmp_path):
    from deblurcli.evaluation.benchmark import ensure_benchmark

    photos = _photos(tmp_path / "photos", 2, size=48)
    cache = tmp_path / "cache"
    stale = cache / ".build-killed"
    (stale / "sharp").mkdir(parents=True)
    (stale / "sharp" / "x.png").write_bytes(b"half")
    live = cache / ".build-live"
    live.mkdir()
    with output_lock(live):  # a build in progress in another process keeps its folder
        built = ensure_benchmark(photos, cache)
    assert (built / "manifest.jsonl").is_file()
    assert not stale.exists() and live.exists()
    assert sorted(p.name for p in cache.iterdir()) == [".build-live", built.name]


# --------------------------------- defect 14: output format checked before any compute
def test_unwritable_output_format_fails_before_the_model_loads(tmp_path):
    frames = [Image.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 255)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    missing_model = tmp_path / "no-such-model.safetensors"
    result = _invoke("restore", gif, "-m", missing_model)
    assert result.exit_code == 1
    assert "cannot write .gif output" in result.stderr
    assert "no such checkpoint" not in result.stderr  # never got as far as the model


# ----------------------------------------- defect 15: a file named like an option
def test_a_file_named_like_an_option(tmp_path, random_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _png(tmp_path / "-d.png")
    result = _invoke("restore", "-d.png", "-m", random_ckpt)
    _assert_refused(result, 2)
    assert "./-d.png" in result.output and "--" in result.output
    assert _invoke("restore", "./-d.png", "-m", random_ckpt).exit_code == 0
    assert (tmp_path / "-d_deblurred.png").is_file()
    (tmp_path / "-d_deblurred.png").unlink()
    assert _invoke("restore", "-m", random_ckpt, "--", "-d.png").exit_code == 0
    assert (tmp_path / "-d_deblurred.png").is_file()


# ------------------------------------------------------------- bad files in a batch
@pytest.mark.parametrize(
    "name,data",
    [
        ("empty.png", b""),
        ("text.png", b"hello"),
        ("trunc.png", None),
        ("dir.png", "dir"),
        ("bomb.png", "bomb"),
    ],  # fmt: skip
)
def test_bad_file_is_one_line_and_the_batch_goes_on(tmp_path, random_ckpt, name, data, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # --max-pixels sets it
    src = _photos(tmp_path / "src", 2)
    bad = src / name
    if data is None:
        bad.write_bytes((src / "p00.png").read_bytes()[:60])
    elif data == "dir":
        bad.mkdir()
        _png(bad / "inner.png")
    elif data == "bomb":
        Image.new("L", (4000, 4000)).save(bad)  # over the limit set below
    else:
        bad.write_bytes(data)
    extra = ["--max-pixels", "1000000"] if data == "bomb" else []
    result = _invoke("restore", src, "-o", tmp_path / "out", "-m", random_ckpt, "--json", *extra)
    summary = json.loads(result.stdout)
    assert len(summary["done"]) == 2
    if data == "dir":  # a folder named like an image is just a folder (not recursed into)
        assert result.exit_code == 0
        return
    assert result.exit_code == 1 and [Path(f["path"]).name for f in summary["failed"]] == [name]
    assert "\n" not in summary["failed"][0]["error"]


def test_blur_bad_file_goes_on(tmp_path):
    src = _photos(tmp_path / "src", 2)
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    result = _invoke("blur", src, "-o", tmp_path / "out", "-j", "1")
    assert result.exit_code == 1 and "broken.png" in result.stderr
    assert len(list((tmp_path / "out" / "blurred").glob("*.png"))) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["blur", "{src}", "-o", "{out}", "--workers", "0"],
        ["blur", "{src}", "-o", "{out}", "--limit", "-1"],
        ["blur", "{src}", "-o", "{out}", "--crop", "-4"],
        ["restore", "{src}", "-o", "{out}", "--batch-size", "0"],
        ["restore", "{src}", "-o", "{out}", "--format", "gif"],
        ["restore", "{src}", "-o", "{out}", "--tile", "-5"],
        ["train", "--arch", "nope", "--data", "{src}", "--out", "{out}"],
        ["train", "--arch", "simplecnn", "--data", "{src}", "--out", "{out}", "--val-every", "0"],
        ["weights", "verify", "no-such-model"],
    ],  # fmt: skip
)
def test_bad_options_are_refused_cleanly(tmp_path, args):
    src = _photos(tmp_path / "src", 1)
    out = tmp_path / "out"
    result = _invoke(*[a.format(src=src, out=out) for a in args])
    _assert_refused(result, (1, 2))
    assert not out.exists() or not any(out.rglob("*.png"))
