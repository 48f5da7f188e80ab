"""Image I/O: depth, alpha, grayscale, EXIF orientation, ICC, atomic writes, bad files."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from deblurcli.errors import ImageReadError
from deblurcli.imageio import ImageData, find_images, read_image, write_image
from tests.conftest import natural_image


def _u8(img: np.ndarray) -> np.ndarray:
    return np.rint(img * 255).astype(np.uint8)


def test_rgb_png_round_trip_is_exact(tmp_path):
    arr = _u8(natural_image(20, 30))
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.pixels.shape == (20, 30, 3) and img.bit_depth == 8
    write_image(tmp_path / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), arr)


def test_sixteen_bit_color_png_stays_sixteen_bit(tmp_path):
    import cv2

    arr = (natural_image(16, 24) * 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "a.png"), arr[..., ::-1])
    img = read_image(tmp_path / "a.png")
    assert img.bit_depth == 16
    np.testing.assert_allclose(img.pixels, arr / 65535.0, atol=1e-6)
    write_image(tmp_path / "b.png", img)
    back = cv2.imread(str(tmp_path / "b.png"), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and np.array_equal(back[..., ::-1], arr)


def test_sixteen_bit_color_png_keeps_icc_and_exif(tmp_path):
    import cv2

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    arr = (natural_image(16, 24) * 65535).astype(np.uint16)
    img = ImageData(arr / 65535.0, bit_depth=16, icc_profile=icc, exif=exif.tobytes())
    write_image(tmp_path / "a.png", img)
    back = read_image(tmp_path / "a.png")
    assert back.bit_depth == 16 and back.icc_profile == icc
    assert Image.open(tmp_path / "a.png").getexif()[0x010F] == "Camera maker"
    decoded = cv2.imread(str(tmp_path / "a.png"), cv2.IMREAD_UNCHANGED)  # libpng checks CRCs
    assert decoded.dtype == np.uint16 and np.array_equal(decoded[..., ::-1], arr)


def test_sixteen_bit_gray_round_trip(tmp_path):
    arr = (natural_image(16, 24)[..., 0] * 65535).astype(np.uint16)
    Image.fromarray(arr).save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.is_gray and img.bit_depth == 16
    write_image(tmp_path / "h.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "h.png")).astype(np.uint16), arr)


def test_rgba_keeps_alpha(tmp_path):
    rgba = np.concatenate([_u8(natural_image(10, 12)), np.full((10, 12, 1), 77, np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.pixels.shape[2] == 3 and img.alpha is not None
    write_image(tmp_path / "b.png", img)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "b.png")), rgba)


def test_gray_stays_gray(tmp_path):
    Image.fromarray(_u8(natural_image(10, 12))[..., 0]).save(tmp_path / "g.jpg")
    img = read_image(tmp_path / "g.jpg")
    assert img.is_gray
    write_image(tmp_path / "h.jpg", img)
    assert Image.open(tmp_path / "h.jpg").mode == "L"


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_and_reset(tmp_path, orientation):
    arr = _u8(natural_image(12, 20))
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = orientation
    im.save(tmp_path / "a.png", exif=exif.tobytes())
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "a.png")))
    img = read_image(tmp_path / "a.png")
    assert np.array_equal(_u8(img.pixels), expected)
    write_image(tmp_path / "b.png", img)
    out = Image.open(tmp_path / "b.png")
    assert out.getexif().get(0x0112, 1) == 1
    assert np.array_equal(np.asarray(out), expected)


def test_icc_profile_survives(tmp_path):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(_u8(natural_image(8, 8))).save(tmp_path / "a.jpg", icc_profile=icc)
    img = read_image(tmp_path / "a.jpg")
    write_image(tmp_path / "b.jpg", img)
    assert Image.open(tmp_path / "b.jpg").info.get("icc_profile") == icc


def test_cmyk_profile_is_not_attached_to_rgb_output(tmp_path):
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk_icc = srgb[:16] + b"CMYK" + srgb[20:]  # a profile whose data colour space is CMYK
    rgb = Image.fromarray(_u8(natural_image(8, 8)))
    rgb.convert("CMYK").save(tmp_path / "a.jpg", icc_profile=cmyk_icc)
    img = read_image(tmp_path / "a.jpg")
    assert img.pixels.shape[2] == 3 and img.icc_profile is None
    write_image(tmp_path / "b.jpg", img)
    assert Image.open(tmp_path / "b.jpg").info.get("icc_profile") is None


@pytest.mark.parametrize(
    "content,reason", [(b"", "empty file"), (b"not an image at all", "not a readable image")]
)
def test_bad_files_raise_one_clear_error(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason):
        read_image(path)


def test_truncated_jpeg_is_an_error(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(_u8(natural_image(64, 64))).save(buf, "JPEG")
    (tmp_path / "t.jpg").write_bytes(buf.getvalue()[:300])
    with pytest.raises(ImageReadError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_write_is_atomic_and_leaves_no_temp(tmp_path):
    img = read_image_from_array(tmp_path)
    write_image(tmp_path / "out" / "x.png", img)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["x.png"]


def read_image_from_array(tmp_path):
    Image.fromarray(_u8(natural_image(8, 8))).save(tmp_path / "src.png")
    return read_image(tmp_path / "src.png")


def test_find_images_is_recursive_and_sorted(tmp_path):
    for rel in ["b/2.png", "a.jpg", "b/1.webp", "notes.txt", ".hidden.png"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    assert [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)] == [
        "a.jpg",
        "b/1.webp",
        "b/2.png",
    ]


def test_atomic_writes_get_ordinary_file_permissions(tmp_path):
    import os

    from deblurcli.imageio import atomic_write_bytes

    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
