"""training.cohort: several models on one loader's batches, time-boxed, failures isolated."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from deblurcli import locks
from deblurcli.errors import UsageError
from deblurcli.imageio import ImageData, write_image
from deblurcli.training.cohort import Cohort
from deblurcli.training.trainer import TrainConfig, train
from deblurcli.weights import load_model
from deblurcli.weights.bundle import read_bundle_index, unpack_bundle, write_bundle
from tests.conftest import natural_image


def _photos(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i in range(3):
        write_image(folder / f"p{i}.png", ImageData(natural_image(96, 112, seed=i)))
    return folder


def _config(arch: str, tmp_path: Path, data: Path, **changes) -> TrainConfig:
    options = dict(
        arch=arch,
        out=tmp_path / arch,
        data=data,
        degrade="gaussian",
        patch_size=32,
        batch_size=2,
        width="tiny",
        adversarial=False,
        val_images=2,
        log_every=1,
    )
    return TrainConfig(**{**options, **changes})


def test_members_must_share_their_data(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    configs = {
        "a": _config("simplecnn", tmp_path, data),
        "b": _config("skipae", tmp_path, data, patch_size=64),
    }
    with pytest.raises(UsageError, match="patch_size"):
        Cohort(configs, seconds=5)
    configs["b"] = _config("skipae", tmp_path, data, degrade_options={"mix_noise_prob": 0})
    with pytest.raises(UsageError, match="degrade_options"):
        Cohort(configs, seconds=5)


def test_a_failing_member_is_dropped_and_the_others_go_on(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    configs = {a: _config(a, tmp_path, data) for a in ("simplecnn", "transformnet")}
    packed = []
    cohort = Cohort(
        configs,
        seconds=300,  # the round cap ends it: the test does not depend on this machine's speed
        max_rounds=6,
        calibrate_s=0,
        checkpoint_s=2,
        final_s=1,
        on_checkpoint=lambda c: packed.append(c.rounds),
    )
    broken = cohort.trainers["transformnet"]
    real_step = broken.train_step

    def fail_on_third_step(batch):
        if broken.step == 2:
            raise RuntimeError("simulated CUDA error")
        return real_step(batch)

    broken.train_step = fail_on_third_step
    result = cohort.run()
    assert "simulated CUDA error" in result.errors["transformnet"]
    assert broken.step == 2
    good = cohort.trainers["simplecnn"]
    assert result.results["simplecnn"].step == result.rounds == 6
    # After calibration the schedule spans the budget, not the nominal million steps.
    assert good.cfg.steps < 10**6
    assert packed and packed[-1] == result.rounds  # the final checkpoint packs too
    assert (tmp_path / "simplecnn" / "model.safetensors").is_file()
    rows = (tmp_path / "simplecnn" / "metrics.csv").read_text().splitlines()
    assert any(",val," in r for r in rows) and any(",train," in r for r in rows)


@pytest.fixture
def quick_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process probes need not wait the lock's grace period for a holder to exit."""
    monkeypatch.setattr(locks, "WAIT_SECONDS", 0.1)


def _lock_state(folder: Path) -> str:
    try:
        with locks.output_lock(folder, "probe"):
            return "free"
    except locks.FolderBusyError:
        return "busy"


def test_every_member_holds_its_run_folder(tmp_path: Path, quick_lock) -> None:
    data = _photos(tmp_path / "photos")
    one = tmp_path / "one"  # two members writing one folder: the second is refused
    configs = {a: _config(a, tmp_path, data, out=one) for a in ("simplecnn", "transformnet")}
    with pytest.raises(locks.FolderBusyError, match="another deblur train run"):
        Cohort(configs, seconds=300, max_rounds=1).run()
    assert _lock_state(one) == "free"  # and the first member let go of it

    seen = []
    cohort = Cohort(
        {"simplecnn": _config("simplecnn", tmp_path, data)},
        seconds=300,
        max_rounds=2,
        calibrate_s=0,
        on_checkpoint=lambda c: seen.append(_lock_state(tmp_path / "simplecnn")),
    )
    cohort.trainers["simplecnn"].begin()  # as run() does; a deblur train there is refused
    with pytest.raises(locks.FolderBusyError):
        train(_config("simplecnn", tmp_path, data, steps=1))
    result = cohort.run()  # begin() again while holding the lock: no deadlock
    assert result.results["simplecnn"].step == 2 and seen == ["busy"]
    assert _lock_state(tmp_path / "simplecnn") == "free"


def _staged_weights(tmp_path: Path, data: Path, degrade: str, stage=None, rounds=3):
    config = _config("simplecnn", tmp_path, data, degrade=degrade)
    cohort = Cohort({"simplecnn": config}, seconds=300, max_rounds=rounds, first_stage=stage)
    cohort.run()
    model = cohort.trainers["simplecnn"].model
    return cohort.stages, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_first_stage_trains_on_its_blur_then_on_the_members(tmp_path: Path) -> None:
    data = _photos(tmp_path / "photos")
    plain, gaussian = _staged_weights(tmp_path / "plain", data, "gaussian")
    assert plain == [("gaussian", 0)]
    # The whole budget in the first stage: the very batches of a Gaussian run.
    whole, staged = _staged_weights(tmp_path / "whole", data, "motion", ("gaussian", 1.0))
    assert whole == [("gaussian", 0)]
    assert all(torch.equal(staged[k], v) for k, v in gaussian.items())
    # A first stage that ends at once: one round of Gaussian blur, then the members' motion.
    short, switched = _staged_weights(tmp_path / "short", data, "motion", ("gaussian", 1e-9))
    assert short == [("gaussian", 0), ("motion", 1)]
    assert not all(torch.equal(switched[k], v) for k, v in gaussian.items())
    with pytest.raises(UsageError, match="share"):
        Cohort({"a": _config("simplecnn", tmp_path, data)}, seconds=5, first_stage=("gaussian", 2))


def test_bundle_round_trip_with_shards(tmp_path: Path) -> None:
    from deblurcli.archs import create, get_spec
    from deblurcli.weights.checkpoint import save_checkpoint

    files = {}
    for arch in ("simplecnn", "skipae"):
        model = create(arch, **get_spec(arch).tiny_config)
        files[arch] = save_checkpoint(model, tmp_path / f"{arch}.safetensors", metadata={"k": arch})
    first = write_bundle(files, tmp_path / "b", max_shard_bytes=20_000, extra={"note": 1})
    assert len([f for f in first if f.suffix == ".safetensors"]) > 2  # sharded
    second = write_bundle(files, tmp_path / "b", max_shard_bytes=20_000)
    assert not any(f.exists() for f in first if f.suffix == ".safetensors")  # old generation gone
    assert all(f.exists() for f in second)
    assert read_bundle_index(tmp_path / "b")["generation"] == 1
    for arch, path in unpack_bundle(tmp_path / "b", tmp_path / "out").items():
        model = load_model(path)
        original = load_model(files[arch])
        for key, value in original.state_dict().items():
            assert (model.state_dict()[key] - value).abs().max() <= 1e-3 * value.abs().max() + 1e-3
        from deblurcli.weights.checkpoint import read_metadata

        assert read_metadata(path)["k"] == arch


def test_a_slow_loader_is_echoed_not_waited_for(tmp_path: Path) -> None:
    import time

    data = _photos(tmp_path / "photos")
    cohort = Cohort(
        {"simplecnn": _config("simplecnn", tmp_path, data)},
        seconds=300,
        max_rounds=8,
        calibrate_s=0,
        echo=3,
    )
    trainer = cohort.trainers["simplecnn"]
    real_batches = trainer.batches

    def slow_batches():
        for batch in real_batches():
            time.sleep(1.0)  # a loader far slower than a tiny model's step
            yield batch

    trainer.batches = slow_batches
    result = cohort.run()
    assert result.rounds == 8 and not result.errors
    assert cohort.echoed > 0 and cohort.feed.fresh + cohort.echoed == 8
    assert cohort.feed.fresh >= 8 // 4  # at most 3 echoes per fresh batch


def test_an_echoed_batch_keeps_its_pairs_aligned() -> None:
    from deblurcli.training.cohort import _reoriented

    blurred = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    sharp = blurred * 2
    for turn in range(4):
        b, s, skipped = _reoriented((blurred, sharp, ["x.png", ""]), turn)
        assert torch.equal(s, b * 2) and skipped == ["", ""]
        assert b.shape == blurred.shape and (turn == 0) == torch.equal(b, blurred)
