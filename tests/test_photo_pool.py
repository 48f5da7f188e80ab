"""The training photo pool, end to end on a real (tiny) .deb and wheel built here: no downloads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from skimage.transform import downscale_local_mean
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.data import photo_pool as pp
from deblurcli.errors import PhotoPoolError, UsageError
from deblurcli.imageio import ImageData, read_image, write_image
from tests.conftest import natural_image

pytestmark = pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
runner = CliRunner()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """A Debian package ``fakepics`` (with symlinks) and a wheel ``fakewheel``, both real."""
    base = tmp_path_factory.mktemp("sources")
    pkg = base / "fakepics"
    pics = pkg / "usr/share/fakepics"
    (pics / "sizes").mkdir(parents=True)
    write_image(pics / "a.png", ImageData(pixels=natural_image(50, 66, seed=1)))
    write_image(pics / "b.jpg", ImageData(pixels=natural_image(48, 64, seed=2)))
    os.symlink("../a.png", pics / "sizes/rel.png")  # relative link, like most wallpapers
    os.symlink("/usr/share/fakepics/b.jpg", pics / "sizes/abs.jpg")  # absolute, package-rooted
    os.symlink("../../../../../../../../etc/hostname", pics / "sizes/evil.png")
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text(
        "Package: fakepics\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: Test <test@example.org>\nDescription: test pictures\n"
    )
    debs = base / "debs"
    debs.mkdir()
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(debs / "fakepics_1.0_all.deb")],
        check=True,
        capture_output=True,
    )
    wheels = base / "wheels"
    wheels.mkdir()
    c_png = base / "c.png"
    write_image(c_png, ImageData(pixels=natural_image(40, 44, seed=3)))
    with zipfile.ZipFile(wheels / "fakewheel-1.0-py3-none-any.whl", "w") as whl:
        whl.write(c_png, "fakewheel/data/c.png")
    return {
        "debs": debs,
        "wheels": wheels,
        "a": pics / "a.png",
        "b": pics / "b.jpg",
        "c": c_png,
        "deb": debs / "fakepics_1.0_all.deb",
    }


def _photo(name: str, source: str, path: str, sha: str, factor: int, split: str) -> dict:
    return dict(name=name, source=source, path=path, sha256=sha, factor=factor, split=split)


def default_photos(src: dict[str, Path]) -> list[dict]:
    a, b, c = _sha(src["a"]), _sha(src["b"]), _sha(src["c"])
    return [
        _photo("deb-a", "fakepics", "usr/share/fakepics/a.png", a, 2, "train"),
        _photo("deb-rel-link", "fakepics", "usr/share/fakepics/sizes/rel.png", a, 4, "train"),
        _photo("deb-abs-link", "fakepics", "usr/share/fakepics/sizes/abs.jpg", b, 3, "val"),
        _photo("wheel-c", "fakewheel", "fakewheel/data/c.png", c, 2, "val"),
    ]


def write_pool(path: Path, photos: list[dict]) -> Path:
    lines = [
        "version = 1",
        '[sources.fakepics]\nkind = "deb"\npackage = "fakepics"\nlicence = "GPL-2+"',
        '[sources.fakewheel]\nkind = "wheel"\npackage = "fakewheel"\nlicence = "per file"',
        '[sources.scikit-image]\nkind = "wheel"\npackage = "scikit-image"\nlicence = "per file"',
    ]
    for p in photos:
        fields = {"licence": "CC0-1.0", **p}
        lines.append(
            "[[photos]]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in fields.items())
        )
    path.write_text("\n\n".join(lines) + "\n")
    return path


@pytest.fixture
def pool(tmp_path, sources) -> Path:
    return write_pool(tmp_path / "pool.toml", default_photos(sources))


def _fetch(root: Path, pool: Path, src: dict[str, Path]) -> Path:
    return pp.fetch(root, pool=pool, debs_dir=src["debs"], wheels_dir=src["wheels"])


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(".")]


def test_fetch_from_local_deb_and_wheel_resolves_symlinks(tmp_path, pool, sources):
    root = _fetch(tmp_path / "root", pool, sources)
    raw = root / "raw"
    assert sorted(p.name for p in raw.iterdir()) == [
        "deb-a.png",
        "deb-abs-link.jpg",
        "deb-rel-link.png",
        "wheel-c.png",
    ]
    assert (raw / "deb-a.png").read_bytes() == sources["a"].read_bytes()
    assert (raw / "deb-rel-link.png").read_bytes() == sources["a"].read_bytes()
    assert (raw / "deb-abs-link.jpg").read_bytes() == sources["b"].read_bytes()
    assert (raw / "wheel-c.png").read_bytes() == sources["c"].read_bytes()
    assert not any(p.is_symlink() for p in raw.iterdir())
    assert _leftovers(root) == []  # no scratch folder, no .part file
    assert all(s.fetched and not s.prepared for s in pp.pool_status(root, pool=pool))


def test_fetch_is_idempotent_and_needs_no_source_once_complete(
    tmp_path, pool, sources, monkeypatch
):
    root = _fetch(tmp_path / "root", pool, sources)
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "raw").iterdir()}
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no apt-get, no pip: nothing may be downloaded
    pp.fetch(root, pool=pool)
    assert {p.name: p.stat().st_mtime_ns for p in (root / "raw").iterdir()} == stamps


def test_fetch_replaces_a_corrupted_file(tmp_path, pool, sources):
    root = _fetch(tmp_path / "root", pool, sources)
    (root / "raw/deb-a.png").write_bytes(b"truncated")
    _fetch(root, pool, sources)
    assert (root / "raw/deb-a.png").read_bytes() == sources["a"].read_bytes()


def test_sha256_mismatch_is_reported_and_the_rest_still_fetched(tmp_path, sources):
    photos = default_photos(sources)
    photos[0]["sha256"] = "0" * 64
    pool = write_pool(tmp_path / "pool.toml", photos)
    root = tmp_path / "root"
    with pytest.raises(PhotoPoolError, match=r"deb-a: sha256 mismatch") as excinfo:
        _fetch(root, pool, sources)
    assert "\n" not in str(excinfo.value)
    assert not (root / "raw/deb-a.png").exists()
    assert (root / "raw/deb-rel-link.png").is_file() and (root / "raw/wheel-c.png").is_file()
    assert _leftovers(root) == []


@pytest.mark.parametrize("bad", ["../../etc/passwd", "/etc/passwd", "usr/../../etc/passwd"])
def test_list_paths_leaving_the_package_are_refused(tmp_path, sources, bad):
    photos = default_photos(sources)
    photos[0]["path"] = bad
    with pytest.raises(PhotoPoolError, match="must stay inside its package"):
        pp.load_pool(write_pool(tmp_path / "pool.toml", photos))


def test_symlink_leaving_the_package_is_refused(tmp_path, sources):
    photos = default_photos(sources)[:1]
    photos[0]["path"] = "usr/share/fakepics/sizes/evil.png"
    pool = write_pool(tmp_path / "pool.toml", photos)
    with pytest.raises(PhotoPoolError, match="leaves the package"):
        _fetch(tmp_path / "root", pool, sources)
    assert not (tmp_path / "root/raw").exists()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("factor", 5, "factor must be"),
        ("split", "test", "split must be"),
        ("source", "nowhere", "unknown source"),
        ("name", "../x", "name must be"),
        ("sha256", "abc", "sha256 must be"),
    ],
)
def test_invalid_list_entries_are_one_line_errors(tmp_path, sources, field, value, message):
    photos = default_photos(sources)
    photos[1][field] = value
    with pytest.raises(PhotoPoolError, match=message):
        pp.load_pool(write_pool(tmp_path / "pool.toml", photos))


def test_missing_apt_is_a_clear_error_and_wheels_still_come(tmp_path, pool, sources, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    root = tmp_path / "root"
    with pytest.raises(PhotoPoolError, match="apt-get is not available.*pass debs_dir"):
        pp.fetch(root, pool=pool, wheels_dir=sources["wheels"])
    assert (root / "raw/wheel-c.png").is_file()


def _fake_apt(tmp_path: Path, body: str, monkeypatch) -> None:
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    script = bin_dir / "apt-get"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    dpkg_dir = Path(shutil.which("dpkg-deb")).parent
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{dpkg_dir}{os.pathsep}/bin")


def test_offline_apt_is_a_clear_error(tmp_path, pool, sources, monkeypatch):
    _fake_apt(
        tmp_path,
        'echo "E: Failed to fetch http://deb.debian.org/x  Temporary failure resolving" >&2\n'
        'echo "W: Some index files failed to download" >&2\n'
        "exit 100\n",
        monkeypatch,
    )
    with pytest.raises(PhotoPoolError, match=r"fakepics failed \(E: Failed to fetch.*offline"):
        pp.fetch(tmp_path / "root", pool=pool, wheels_dir=sources["wheels"])


def test_apt_get_download_runs_in_a_scratch_folder(tmp_path, pool, sources, monkeypatch):
    # Stands in for apt-get: writes the package into the current directory, as apt does.
    _fake_apt(
        tmp_path,
        f'[ "$1" = download ] && [ "$2" = fakepics ] || exit 2\ncp "{sources["deb"]}" .\n',
        monkeypatch,
    )
    root = pp.fetch(tmp_path / "root", pool=pool, wheels_dir=sources["wheels"])
    assert (root / "raw/deb-abs-link.jpg").read_bytes() == sources["b"].read_bytes()
    assert not list(root.glob("*.deb")) and _leftovers(root) == []


def _fake_pip(tmp_path: Path, body: str, monkeypatch) -> None:
    """Stands in for ``python -m pip``: $dest is the -d folder, $last the requirement."""
    script = tmp_path / "fake-python"
    script.write_text(
        "#!/bin/sh\n"
        'while [ $# -gt 0 ]; do [ "$1" = -d ] && dest="$2"; last="$1"; shift; done\n' + body
    )
    script.chmod(0o755)
    monkeypatch.setattr(pp.sys, "executable", str(script))


def test_pip_download_runs_in_a_scratch_folder(tmp_path, pool, sources, monkeypatch):
    wheel = sources["wheels"] / "fakewheel-1.0-py3-none-any.whl"
    _fake_pip(tmp_path, f'[ "$last" = fakewheel ] || exit 3\ncp "{wheel}" "$dest/"\n', monkeypatch)
    root = pp.fetch(tmp_path / "root", pool=pool, debs_dir=sources["debs"])
    assert (root / "raw/wheel-c.png").read_bytes() == sources["c"].read_bytes()
    assert _leftovers(root) == []


def test_offline_pip_is_a_clear_error(tmp_path, pool, sources, monkeypatch):
    _fake_pip(
        tmp_path,
        'echo "ERROR: No matching distribution found for $last" >&2\nexit 1\n',
        monkeypatch,
    )
    with pytest.raises(PhotoPoolError, match=r"pip download fakewheel failed \(ERROR: No match"):
        pp.fetch(tmp_path / "root", pool=pool, debs_dir=sources["debs"])
    assert (tmp_path / "root/raw/deb-a.png").is_file()  # the .deb photos still came


def test_installed_distribution_is_used_before_downloading(tmp_path, monkeypatch):
    import skimage

    chelsea = Path(skimage.__file__).parent / "data" / "chelsea.png"
    photo = _photo("cat", "scikit-image", "skimage/data/chelsea.png", _sha(chelsea), 2, "train")
    pool = write_pool(tmp_path / "pool.toml", [photo])
    monkeypatch.setenv("PATH", str(tmp_path))  # pip is run via sys.executable; apt absent
    root = pp.fetch(tmp_path / "root", pool=pool, wheels_dir=tmp_path)  # no wheel there
    assert (root / "raw/cat.png").read_bytes() == chelsea.read_bytes()


def _reference_downscale(path: Path, factor: int) -> np.ndarray:
    """scikit-image's block mean in linear light, encoded back to 8-bit sRGB."""
    pixels = read_image(path).pixels
    h, w = (pixels.shape[0] // factor) * factor, (pixels.shape[1] // factor) * factor
    linear = pp.srgb_to_linear(pixels[:h, :w].astype(np.float64))
    small = downscale_local_mean(linear, (factor, factor, 1))
    return np.rint(pp.linear_to_srgb(small) * 255)


def test_prepare_downscales_in_linear_light_and_splits_by_photo(tmp_path, pool, sources):
    root = _fetch(tmp_path / "root", pool, sources)
    prepared = pp.prepare(root, pool=pool)
    assert sorted(p.name for p in (prepared / "train").iterdir()) == [
        "deb-a.png",
        "deb-rel-link.png",
    ]
    assert sorted(p.name for p in (prepared / "val").iterdir()) == [
        "deb-abs-link.png",
        "wheel-c.png",
    ]
    for name, split, factor, raw in [
        ("deb-a", "train", 2, "deb-a.png"),
        ("deb-rel-link", "train", 4, "deb-rel-link.png"),
        ("deb-abs-link", "val", 3, "deb-abs-link.jpg"),
        ("wheel-c", "val", 2, "wheel-c.png"),
    ]:
        out = read_image(prepared / split / f"{name}.png")
        expected = _reference_downscale(root / "raw" / raw, factor)
        assert out.bit_depth == 8 and out.pixels.shape == expected.shape
        assert np.abs(out.pixels * 255 - expected).max() <= 1.0
    assert pp.split_dir("train", root) == prepared / "train"
    assert pp.split_dir("val", root) == prepared / "val"


def test_downscale_averages_light_not_codes():
    checker = np.indices((8, 8)).sum(axis=0) % 2  # black/white pixels
    image = np.repeat(checker[..., None], 3, axis=2).astype(np.float32)
    small = pp.downscale(image, 2)
    assert small.shape == (4, 4, 3)
    # Half the light of white is sRGB 0.735 (code 188), not the naive code average 0.5.
    np.testing.assert_allclose(small, pp.linear_to_srgb(np.float32(0.5)), atol=1e-5)
    assert abs(float(small.mean()) - 0.7354) < 1e-3


def test_downscale_of_8bit_codes_matches_floats():
    codes = np.random.default_rng(0).integers(0, 256, (30, 41, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        pp.downscale(codes, 3), pp.downscale(codes.astype(np.float32) / 255, 3), atol=1e-6
    )


def test_srgb_transfer_round_trips():
    x = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(pp.linear_to_srgb(pp.srgb_to_linear(x)), x, atol=1e-5)


def test_prepare_is_idempotent_and_follows_changes_to_the_list(tmp_path, sources):
    photos = default_photos(sources)
    pool = write_pool(tmp_path / "pool.toml", photos)
    root = _fetch(tmp_path / "root", pool, sources)
    prepared = pp.prepare(root, pool=pool)
    stamps = {p: p.stat().st_mtime_ns for p in prepared.rglob("*.png")}
    pp.prepare(root, pool=pool)
    assert {p: p.stat().st_mtime_ns for p in prepared.rglob("*.png")} == stamps

    photos[0]["split"] = "val"  # deb-a moves to the benchmark split
    photos[3]["factor"] = 4  # wheel-c gets a stronger downscale
    pool = write_pool(tmp_path / "pool.toml", photos)
    pp.prepare(root, pool=pool)
    assert not (prepared / "train/deb-a.png").exists()
    assert (prepared / "val/deb-a.png").is_file()
    assert read_image(prepared / "val/wheel-c.png").pixels.shape[:2] == (10, 11)
    assert (prepared / "train/deb-rel-link.png").stat().st_mtime_ns == stamps[
        prepared / "train/deb-rel-link.png"
    ]


def test_split_dir_names_the_command_to_run(tmp_path, pool, sources):
    root = tmp_path / "root"
    with pytest.raises(PhotoPoolError, match=r"'deblur data fetch --root .*' then 'deblur data"):
        pp.split_dir("train", root)
    _fetch(root, pool, sources)
    with pytest.raises(PhotoPoolError, match=r"run 'deblur data prepare --root") as excinfo:
        pp.split_dir("val", root)
    assert "fetch" not in str(excinfo.value)
    with pytest.raises(UsageError, match="unknown split"):
        pp.split_dir("test", root)


def test_prepare_goes_on_past_an_unreadable_photo(tmp_path, pool, sources):
    root = _fetch(tmp_path / "root", pool, sources)
    (root / "raw/deb-a.png").write_bytes(b"not a png")  # damaged after fetch
    (root / "raw/wheel-c.png").unlink()
    with pytest.raises(PhotoPoolError) as excinfo:
        pp.prepare(root, pool=pool)
    message = str(excinfo.value)
    assert "deb-a.png: sha256 does not match the pool list" in message  # caught before decoding
    assert "1 photo(s) not fetched (wheel-c)" in message and "\n" not in message
    assert (root / "prepared/train/deb-rel-link.png").is_file()
    assert (root / "prepared/val/deb-abs-link.png").is_file()
    assert not (root / "prepared/train/deb-a.png").exists()
    assert _leftovers(root) == []


def test_prepare_before_fetch_names_the_command(tmp_path, pool):
    with pytest.raises(PhotoPoolError, match="run 'deblur data fetch --root"):
        pp.prepare(tmp_path / "root", pool=pool)
    assert not (tmp_path / "root").exists()


def test_default_root_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DEBLURCLI_DATA", str(tmp_path / "pool"))
    assert pp.default_root() == tmp_path / "pool"
    monkeypatch.delenv("DEBLURCLI_DATA")
    assert pp.default_root() == Path.home() / ".cache/deblurcli/photos"


def test_shipped_list_uses_only_the_issue_sources():
    pool = pp.load_pool()
    assert set(pool.sources) == {
        "plasma-workspace-wallpapers",
        "mate-backgrounds",
        "palapeli-data",
        "digikam-data",
        "scikit-image",
        "scikit-learn",
    }
    per_source = {name: 0 for name in pool.sources}
    for photo in pool.photos:
        per_source[photo.source] += 1
        if pool.sources[photo.source].kind == "deb":
            assert photo.licence == "GPL-2+"
    limits = {"plasma-workspace-wallpapers": 11, "mate-backgrounds": 12, "palapeli-data": 5}
    limits |= {"digikam-data": 1, "scikit-image": 5, "scikit-learn": 2}
    assert all(1 <= per_source[name] <= limit for name, limit in limits.items())
    assert 25 <= len(pool.photos) <= 40
    assert 6 <= len(pool.in_split("val")) <= 10
    assert all(
        p.path.startswith("usr/share/backgrounds/mate/nature/")
        for p in pool.photos
        if p.source == "mate-backgrounds"
    )


def test_check_list_is_apart_from_the_training_pool():
    check, training = pp.load_pool("check"), pp.load_pool("training")
    assert not set(check.sources) & set(training.sources)
    assert not {p.sha256 for p in check.photos} & {p.sha256 for p in training.photos}
    assert not {p.name for p in check.photos} & {p.name for p in training.photos}
    assert len(check.photos) >= 8 and all(p.split == "val" for p in check.photos)
    assert pp.load_pool() == training


def test_cli_pool_option_takes_a_bundled_name_or_a_file(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "list", "--root", str(tmp_path), "--pool", "check"])
    assert result.exit_code == 0, result.output
    assert "lomiri-wine" in result.output and "plasma" not in result.output
    missing = tmp_path / "nope.toml"
    result = runner.invoke(app, ["data", "list", "--root", str(tmp_path), "--pool", str(missing)])
    assert result.exit_code == 1
    assert "cannot read the photo list" in result.output and "Traceback" not in result.output


def test_cli_fetch_list_prepare(tmp_path, pool, sources):
    root = str(tmp_path / "root")
    common = ["--root", root, "--pool", str(pool)]
    result = runner.invoke(
        app,
        [
            "data",
            "fetch",
            *common,
            "--debs-dir",
            str(sources["debs"]),
            "--wheels-dir",
            str(sources["wheels"]),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 fetched" in result.output
    result = runner.invoke(app, ["data", "prepare", *common])
    assert result.exit_code == 0, result.output
    assert "2 train and 2 val" in result.output
    result = runner.invoke(app, ["data", "list", *common, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == [p["name"] for p in default_photos(sources)]
    assert all(r["fetched"] and r["prepared"] for r in rows)
    result = runner.invoke(app, ["data", "list", *common])
    assert result.exit_code == 0 and "deb-abs-link" in result.output
    assert "4 photos, 4 fetched, 4 prepared" in result.output


def test_cli_error_is_one_line_without_traceback(tmp_path, sources):
    pool = write_pool(tmp_path / "pool.toml", default_photos(sources)[:3])  # .deb photos only
    env = {"PATH": str(tmp_path), "DEBLURCLI_DATA": str(tmp_path / "root")}
    result = runner.invoke(app, ["data", "fetch", "--pool", str(pool)], env=env)
    assert result.exit_code == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "apt-get is not available" in errors[0]
    assert result.output.strip().splitlines()[-1] == errors[0]
