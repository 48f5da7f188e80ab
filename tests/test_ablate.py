"""scripts/ablate.py: the ablation plan, its train commands, and a real tiny run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import natural_image

from deblurcli.archs import resolve_config
from deblurcli.imageio import ImageData, write_image
from deblurcli.training.recipes import parse_losses

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "ablate.py"


def _driver():
    spec = importlib.util.spec_from_file_location("ablate", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ab = _driver()


def test_shipped_plan_variants_are_valid_train_settings():
    variants = ab.load_variants()
    assert len({v["name"] for v in variants}) == len(variants) >= 2
    for v in variants:
        resolve_config(v["arch"], **v["config"])  # every config key exists in the arch
        parse_losses(v["loss"])
        cmd = ab.train_command(v, Path("out"), Path("train"), Path("val"))
        assert cmd[cmd.index("--steps") + 1] == str(v["steps"])
    # Fixed steps: every variant of a budget group (the name's prefix: g-, n-, g2k-) trains
    # for the same number of steps.
    groups: dict[str, set] = {}
    for v in variants:
        groups.setdefault(v["name"].split("-")[0], set()).add(v["steps"])
    assert all(len(steps) == 1 for steps in groups.values()), groups


def test_variant_merges_defaults_and_config(tmp_path: Path):
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[defaults]\narch = "edgenet"\nsteps = 5\nlr = 1e-3\n'
        "config = { deblur_base = 8, deblur_blocks = 2 }\n"
        '[[variant]]\nname = "a"\n'
        '[[variant]]\nname = "b"\nlr = 2e-3\nwarmup = 3\nconfig = { deblur_blocks = 4 }\n'
        '[[variant]]\nname = "c"\narch = "transformnet"\n'
    )
    a, b, c = ab.load_variants(plan)
    assert c["config"] == {} and c["arch"] == "transformnet"  # edgenet's config is not its
    assert a["config"] == {"deblur_base": 8, "deblur_blocks": 2} and a["lr"] == 1e-3
    assert b["config"] == {"deblur_base": 8, "deblur_blocks": 4} and b["lr"] == 2e-3
    cmd = ab.train_command(b, Path("out"), Path("t"), Path("v"))
    assert cmd[cmd.index("--warmup") + 1] == "3" and "deblur_blocks=4" in cmd
    assert "--warmup" not in ab.train_command(a, Path("out"), Path("t"), Path("v"))
    assert "--no-adversarial" not in cmd and "--freeze-bn" not in cmd
    flagged = ab.train_command(
        {**b, "adversarial": False, "freeze_bn": True}, Path("o"), Path("t"), Path("v")
    )
    assert "--no-adversarial" in flagged and "--freeze-bn" in flagged
    assert "True" not in flagged and "False" not in flagged  # flags, not option values
    b["degrade_options"] = {"mix_noise_prob": 0, "gaussian_sigma": [1, 3]}
    cmd = ab.train_command(b, Path("out"), Path("t"), Path("v"))
    shown = " ".join(cmd)
    assert "--degrade-option mix_noise_prob=0 --degrade-option gaussian_sigma=[1,3]" in shown


def test_a_variant_initialised_from_another_trains_after_it():
    def v(name: str, init: str | None = None) -> dict:
        return {"name": name, "init": init}

    a, b, c = v("a"), v("b", "a/run/model.safetensors"), v("c", "b/run/last.safetensors")
    d, e = v("d", "edgenet"), v("e", "/abs/a/run/model.safetensors")
    assert ab.waves([c, b, a, d, e]) == [[a, d, e], [b], [c]]
    assert ab.waves([b]) == [[b]]  # its parent not chosen: trained already, or an error then
    with pytest.raises(ab.PlanError, match="init cycle"):
        ab.waves([v("x", "y/run/model.safetensors"), v("y", "x/run/model.safetensors")])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[variant]]\nname = "a"\nlearning_rate = 1\n', "unknown key"),
        ("[[variant]]\nlr = 1\n", "no name"),
        ('[[variant]]\nname = "a"\n[[variant]]\nname = "a"\n', "repeat"),
        ("[defaults]\nsteps = 1\n", "no [[variant]]"),
    ],
)
def test_plan_errors(tmp_path: Path, text: str, message: str):
    plan = tmp_path / "plan.toml"
    plan.write_text(text)
    with pytest.raises(ab.PlanError, match=re.escape(message)):
        ab.load_variants(plan)


def test_write_table_keeps_the_prose_around_the_markers(tmp_path: Path):
    doc = tmp_path / "doc.md"
    doc.write_text(f"intro\n{ab.TABLE_START}\nold\n{ab.TABLE_END}\nconclusion\n")
    ab.write_table("| new |\n", doc)
    assert doc.read_text() == f"intro\n{ab.TABLE_START}\n| new |\n{ab.TABLE_END}\nconclusion\n"
    doc.write_text("no markers\n")
    with pytest.raises(ab.PlanError, match="markers"):
        ab.write_table("| new |\n", doc)


def test_tiny_ablation_end_to_end(tmp_path: Path):
    for split, n in (("train", 3), ("val", 2)):
        for i in range(n):
            image = ImageData(natural_image(96, 96, seed=10 * n + i), bit_depth=8)
            write_image(tmp_path / split / f"p{i}.png", image)
    plan = tmp_path / "plan.toml"
    plan.write_text(
        '[defaults]\narch = "transformnet"\ndegrade = "gaussian"\n'
        "patch_size = 32\nbatch_size = 2\nsteps = 2\nval_every = 2\n"
        '[[variant]]\nname = "base"\nnote = "L1"\nloss = "l1"\nwidth = "tiny"\n'
        '[[variant]]\nname = "charb"\nnote = "Charbonnier + FFT"\nloss = "charbonnier,fft:0.1"\n'
        'warmup = 2\nwidth = "tiny"\n'
        '[[variant]]\nname = "cont"\ninit = "base/run/last.safetensors"\nseed = 1\n'
    )
    args = [str(SCRIPT), "--plan", str(plan), "--runs", str(tmp_path / "runs")]
    args += ["--train-photos", str(tmp_path / "train"), "--val-photos", str(tmp_path / "val")]
    args += ["--benchmark-dir", str(tmp_path / "bench"), "--doc", str(tmp_path / "doc.md")]
    env = {**os.environ, "DEBLURCLI_CACHE": str(tmp_path / "cache")}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.run(
        [sys.executable, *args, "--jobs", "2", "--only", "base", "--only", "charb"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "runs" / "charb" / "result.json").read_text())
    assert "--loss charbonnier,fft:0.1 --patch-size 32" in result["command"]
    assert result["train"]["steps"] == 2 and result["wall_s"] > 0
    model, unsharp = result["scores"]["model"], result["scores"]["unsharp"]
    assert set(model) == set(unsharp) == {"mixed", "gaussian", "motion", "noisy", "camera"}
    # mixed: the default benchmark's gain, which the camera family (scored apart) stays out of
    bench = json.loads((tmp_path / "runs" / "charb" / "eval" / "summary.json").read_text())
    row = next(r for r in bench["rows"] if r["kind"] == "model")
    assert set(row["families"]) == {"gaussian", "motion", "noisy"}
    assert model["mixed"] == pytest.approx(row["psnr_gain"], abs=1e-3)
    assert unsharp["gaussian"] > 0  # the tuned unsharp mask sharpens Gaussian blur
    doc = (tmp_path / "doc.md").read_text()
    assert doc.count("\n| ") == 4  # header, base, charb, unsharp
    assert "| charb | Charbonnier + FFT |" in doc and "| unsharp (tuned) |" in doc
    # Finished variants are not trained again.
    stamp = (tmp_path / "runs" / "base" / "result.json").stat().st_mtime_ns
    again = subprocess.run(
        [sys.executable, *args, "--only", "base"], capture_output=True, text=True, env=env
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "runs" / "base" / "result.json").stat().st_mtime_ns == stamp
    # --rescore scores it again without training it again.
    trained = (tmp_path / "runs" / "base" / "train.json").stat().st_mtime_ns
    rescored = subprocess.run(
        [sys.executable, *args, "--only", "base", "--rescore"],
        capture_output=True,
        text=True,
        env=env,
    )
    assert rescored.returncode == 0, rescored.stderr
    assert (tmp_path / "runs" / "base" / "result.json").stat().st_mtime_ns != stamp
    assert (tmp_path / "runs" / "base" / "train.json").stat().st_mtime_ns == trained
    bad = subprocess.run(
        [sys.executable, *args, "--only", "nope"], capture_output=True, text=True, env=env
    )
    assert bad.returncode == 2 and "no variant named nope" in bad.stderr
    # A relative init is another variant's run under --runs: "cont" continues "base".
    cont = subprocess.run(
        [sys.executable, *args, "--only", "cont"], capture_output=True, text=True, env=env
    )
    assert cont.returncode == 0, cont.stderr
    trained = json.loads((tmp_path / "runs" / "cont" / "train.json").read_text())
    assert trained["init"]["model"] == str(tmp_path / "runs" / "base" / "run" / "last.safetensors")
    # A training cut off before its result (the session ended) resumes, without its --init.
    for name in ("train.json", "result.json"):
        (tmp_path / "runs" / "cont" / name).unlink()
    resumed = subprocess.run(
        [sys.executable, *args, "--only", "cont"], capture_output=True, text=True, env=env
    )
    assert resumed.returncode == 0, resumed.stderr
    log = (tmp_path / "runs" / "cont" / "log.txt").read_text()
    last = log.split("$ ")[-3].splitlines()[0]  # the train command, before the two evals'
    assert last.endswith("--json --resume") and "--init" not in last
    assert (tmp_path / "runs" / "cont" / "result.json").is_file()


def test_relative_init_is_under_the_runs_folder():
    root = Path("/runs")
    assert ab.with_init_under({"init": "a/run/last.safetensors"}, root)["init"] == str(
        root / "a" / "run" / "last.safetensors"
    )
    for init in ("edgenet", "/abs/model.safetensors", None):
        assert ab.with_init_under({"init": init}, root) == {"init": init}
