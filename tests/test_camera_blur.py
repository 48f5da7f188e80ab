"""The camera family: the physics of its blur, noise and tone curve, and its CLI paths."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deblurcli.cli import app
from deblurcli.degradations import (
    CameraDraw,
    CameraShake,
    DegradeOptions,
    apply_camera,
    convolve,
    degrade,
    draw_camera,
    image_seed,
    linear_to_srgb,
    load_kernel,
    random_trajectory,
    srgb_to_linear,
)
from deblurcli.degradations.camera import integrate_exposure, saturation_mask, sensor_noise
from deblurcli.degradations.kernels import splat
from deblurcli.imageio import ImageData, read_image, write_image
from tests.conftest import natural_image

# No noise, no JPEG: the blur alone (saturation is off unless a draw boosts it).
QUIET = DegradeOptions(camera_noise_prob=0.0, camera_jpeg_prob=0.0)


def _translation(shape: tuple[int, ...], length: float, poses: int, seed: int) -> CameraShake:
    """A shake that only shifts the image, along a random trajectory centred on its mean."""
    pts = random_trajectory(np.random.default_rng(seed), length).points
    pts = pts[np.linspace(0, len(pts) - 1, poses).round().astype(int)]
    tx, ty = pts.real - pts.real.mean(), -pts.imag + pts.imag.mean()
    still = CameraShake.still(shape, poses)
    return dataclasses.replace(still, tx=tx, ty=ty)


def test_srgb_curve_round_trips_and_matches_the_standard():
    v = np.linspace(0, 1, 1001, dtype=np.float32)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(v)), v, atol=2e-6)
    assert srgb_to_linear(np.float32([0.5]))[0] == pytest.approx(0.21404, abs=1e-5)
    assert srgb_to_linear(np.float32([0.04]))[0] == pytest.approx(0.04 / 12.92)


def test_zero_length_trajectory_is_the_identity():
    image = natural_image(48, 64)
    image[10:20, 10:20] = 1.0  # highlights too: nothing boosts them without a boost
    draw = CameraDraw(shake=CameraShake.still(image.shape, poses=12))
    out, kernel = apply_camera(image, draw)
    np.testing.assert_allclose(out, image, atol=1e-5)
    assert kernel.shape == (3, 3) and kernel[1, 1] == pytest.approx(1.0)
    # A drawn degradation with its motion, noise and JPEG taken away: the identity again.
    drawn = draw_camera(np.random.default_rng(0), image.shape, DegradeOptions())
    still = dataclasses.replace(drawn, shake=CameraShake.still(image.shape), saturation_boost=0.0,
                                shot_gain=0.0, read_sigma=0.0, jpeg_quality=None)  # fmt: skip
    np.testing.assert_allclose(apply_camera(image, still)[0], image, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_pure_translation_equals_the_uniform_kernel_blur(seed):
    light = srgb_to_linear(natural_image(96, 96, seed=seed))
    shake = _translation(light.shape, length=14.0, poses=24, seed=seed)
    kernel = splat(shake.tx, shake.ty)
    np.testing.assert_allclose(shake.centre_psf(), kernel, atol=1e-7)
    warped = integrate_exposure(light, shake)
    convolved = convolve(light, kernel)
    inner = (slice(16, -16), slice(16, -16))
    diff = np.abs(warped - convolved)[inner]
    # OpenCV interpolates at 1/32 px: only that rounding is left.
    assert diff.max() < 2e-3 and diff.mean() < 2e-4, (diff.max(), diff.mean())
    assert np.abs(warped - light)[inner].mean() > 50 * diff.mean()  # it did blur
    # The whole pipeline is that blur between the tone curves.
    out, _ = apply_camera(linear_to_srgb(light), CameraDraw(shake=shake))
    expected = linear_to_srgb(convolve(light, kernel))
    assert np.abs(out - expected)[inner].max() < 5e-3


def test_linear_light_blur_of_an_edge_is_brighter_than_srgb_blur():
    edge = np.zeros((64, 64, 3), np.float32)
    edge[:, 32:] = 1.0
    shake = _translation(edge.shape, length=12.0, poses=16, seed=4)
    camera, kernel = apply_camera(edge, CameraDraw(shake=shake))
    srgb_space = convolve(edge, kernel)
    band = (slice(16, -16), slice(20, 44))  # the blurred edge, away from the borders
    assert camera[band].mean() > srgb_space[band].mean() + 0.05
    # Mid-way through the edge a camera records half the light: sRGB 0.735, not 0.5.
    transition = (camera[band] > 0.02) & (camera[band] < 0.98)
    assert transition.any()
    assert np.all(camera[band] >= srgb_space[band] - 1e-3)


def test_saturated_highlights_streak_brighter_and_clip():
    image = np.full((64, 64, 3), 0.2, np.float32)
    image[28:36, 28:36] = 1.0  # a lamp: clipped in the sharp photo
    shake = _translation(image.shape, length=20.0, poses=24, seed=5)
    plain, _ = apply_camera(image, CameraDraw(shake=shake))
    boosted, _ = apply_camera(image, CameraDraw(shake=shake, saturation_boost=1.5))
    assert boosted.max() == pytest.approx(1.0) and boosted.min() >= 0.0
    assert boosted.mean() > plain.mean() + 0.005
    assert (boosted >= 0.999).sum() > (plain >= 0.999).sum()  # a longer clipped streak
    assert np.all(saturation_mask(image)[image < 0.9] == 0)


def test_a_saturated_colour_is_boosted_in_its_clipped_channel_only():
    image = np.full((64, 64, 3), 0.2, np.float32)
    image[24:40, 24:40] = (1.0, 0.8, 0.1)  # a yellow petal: only red is clipped
    mask = saturation_mask(image)
    assert mask.shape == image.shape and np.all(mask[24:40, 24:40] == (1.0, 0.0, 0.0))
    still = CameraShake.still(image.shape)
    # No motion: the boost is clipped away and the colour is what it was, not whiter.
    out, _ = apply_camera(image, CameraDraw(shake=still, saturation_boost=1.75))
    np.testing.assert_allclose(out, image, atol=2e-3)
    shake = _translation(image.shape, length=20.0, poses=24, seed=5)
    plain, _ = apply_camera(image, CameraDraw(shake=shake))
    boosted, _ = apply_camera(image, CameraDraw(shake=shake, saturation_boost=1.5))
    np.testing.assert_array_equal(boosted[..., 1:], plain[..., 1:])  # green, blue: as recorded
    assert boosted[..., 0].mean() > plain[..., 0].mean() + 0.005  # red streaks brighter


def test_noise_variance_grows_with_the_signal():
    rng = np.random.default_rng(0)
    shot, read = 2e-3, 5e-3
    variances = []
    for level in (0.02, 0.1, 0.3, 0.6, 0.9):
        flat = np.full((200, 200), level, np.float32)
        var = float(sensor_noise(flat, shot, read, rng).var())
        assert var == pytest.approx(shot * level + read**2, rel=0.05)
        variances.append(var)
    assert variances == sorted(variances)


def test_roll_blurs_the_corners_and_not_the_centre():
    shape = (65, 97, 3)
    still = CameraShake.still(shape, poses=24)
    roll = dataclasses.replace(still, roll=np.linspace(-0.06, 0.06, 24))
    kernel = roll.centre_psf()
    half = kernel.shape[0] // 2
    assert kernel[half, half] == pytest.approx(1.0, abs=1e-6)  # the centre does not move
    assert roll.path_length(0, 0) > 5.0
    image = natural_image(*shape[:2])
    out, _ = apply_camera(image, CameraDraw(shake=roll))
    cy, cx = shape[0] // 2, shape[1] // 2
    centre = np.abs(out - image)[cy - 2 : cy + 3, cx - 2 : cx + 3].mean()
    corner = np.abs(out - image)[:12, :12].mean()
    assert centre < 2e-3 < corner


def test_drawn_shake_matches_the_motion_statistics_and_varies_across_the_frame():
    rng = np.random.default_rng(6)
    opts = DegradeOptions(motion_length=(15.0, 15.0), camera_roll=(1.0, 1.0))
    for _ in range(5):
        draw = draw_camera(rng, (192, 192, 3), opts)
        p = draw.params
        assert p["length"] == 15.0 and 0.6 <= p["focal_rel"] <= 2.0
        assert p["centre_path_px"] == pytest.approx(15.0, rel=0.3)
        assert p["corner_path_px"] > p["centre_path_px"]
        assert 8 <= p["poses"] <= 48 and len(p["yaw_deg"]) == p["poses"]
        kernel = draw.shake.centre_psf()
        y, x = np.mgrid[: kernel.shape[0], : kernel.shape[1]]
        half = kernel.shape[0] // 2
        assert (kernel * x).sum() == pytest.approx(half, abs=1e-3)  # centred: no drift
        assert (kernel * y).sum() == pytest.approx(half, abs=1e-3)


def test_degrade_camera_is_the_draw_then_the_apply_and_is_deterministic():
    image = natural_image(64, 80)
    result = degrade(image, "camera", np.random.default_rng(9))
    draw = draw_camera(np.random.default_rng(9), image.shape, DegradeOptions())
    out, kernel = apply_camera(image, draw)
    np.testing.assert_array_equal(result.image, out)
    np.testing.assert_array_equal(result.kernel, kernel)
    again = degrade(image, "camera", np.random.default_rng(9))
    np.testing.assert_array_equal(again.image, result.image)
    other = degrade(image, "camera", np.random.default_rng(10))
    assert not np.array_equal(other.image, result.image)
    record = json.loads(json.dumps(result.record))
    assert record == result.record
    assert record["blur"] == "camera" and record["kernel_size"] == list(kernel.shape)
    assert record["blur_params"]["poses"] == len(record["blur_params"]["roll_deg"])
    noisy = [degrade(image, "camera", np.random.default_rng(s)).record for s in range(40)]
    assert any(r["noise"] is None for r in noisy) and any(r["noise"] for r in noisy)
    assert {r["noise"]["type"] for r in noisy if r["noise"]} == {"poisson_gaussian"}
    assert any(r["jpeg_quality"] is None for r in noisy)
    assert all(60 <= r["jpeg_quality"] <= 95 for r in noisy if r["jpeg_quality"])


def test_inset_renders_only_the_kept_window():
    image = natural_image(72, 72)
    full = degrade(image, "camera", np.random.default_rng(2), QUIET).image
    inner = degrade(image, "camera", np.random.default_rng(2), QUIET, inset=12).image
    assert inner.shape == (48, 48, 3)
    assert np.abs(inner - full[12:-12, 12:-12]).max() < 2e-3
    kept = degrade(image, "motion", np.random.default_rng(2), inset=12).image
    whole = degrade(image, "motion", np.random.default_rng(2)).image
    np.testing.assert_array_equal(kept, whole[12:-12, 12:-12])  # the same bytes, cut
    with pytest.raises(ValueError):
        degrade(image, "camera", np.random.default_rng(2), inset=36)


def test_camera_options_are_checked():
    for bad in ({"camera_focal": (0.0, 1.0)}, {"camera_roll": (1.0, 0.5)},
                {"camera_noise_prob": 1.5}, {"camera_shot_noise": (-1.0, 1.0)}):  # fmt: skip
        with pytest.raises(ValueError):
            DegradeOptions(**bad)


def test_blur_cli_camera_writes_a_dataset_with_centre_kernels(tmp_path: Path):
    for i in range(3):
        write_image(tmp_path / "src" / f"p{i}.png", ImageData(natural_image(48, 64, seed=i)))
    out = tmp_path / "out"
    args = ["blur", str(tmp_path / "src"), "-o", str(out), "--kind", "camera", "--seed", "4"]
    result = CliRunner().invoke(app, [*args, "--workers", "1"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert r["kind"] == "camera" and r["blur"] == "camera"
        assert r["blur_params"]["focal"] > 0 and r["blur_params"]["poses"] >= 8
        kernel = load_kernel(out, r["path"])
        assert kernel.sum() == pytest.approx(1.0, abs=1e-5) and kernel.shape[0] % 2 == 1
        sharp = natural_image(48, 64, seed=int(r["path"][1]))
        rng = np.random.default_rng(image_seed(4, r["path"]))
        expected = degrade(read_image(out / "sharp" / r["path"]).pixels, "camera", rng)
        np.testing.assert_array_equal(kernel, expected.kernel)
        blurred = read_image(out / "blurred" / r["path"]).pixels
        assert np.abs(blurred - np.rint(expected.image * 255) / 255).max() < 1e-6
        assert np.abs(blurred - sharp).mean() > 1e-3
    noisy = CliRunner().invoke(app, [*args, "--noise-sigma", "0.02"])
    assert noisy.exit_code == 2 and "camera" in noisy.output


def test_train_degrade_camera_runs(tmp_path: Path):
    for i in range(3):
        write_image(tmp_path / "p" / f"p{i}.png", ImageData(natural_image(64, 64, seed=i)))
    args = ["train", "--arch", "transformnet", "--width", "tiny", "--data", str(tmp_path / "p")]
    args += ["--degrade", "camera", "--patch-size", "32", "--batch-size", "2", "--steps", "2"]
    args += ["--workers", "0", "--device", "cpu", "--out", str(tmp_path / "run"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output[result.output.index("{") :])["step"] == 2
