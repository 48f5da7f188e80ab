"""The CLI surface through real invocations (Typer's runner and a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from deblurcli.archs import default_parameter_count, list_archs
from deblurcli.cli import app

runner = CliRunner()


def test_help_lists_every_command():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("blur", "train", "eval", "restore", "models", "weights"):
        assert command in result.output


def test_models_table():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in list_archs():
        assert name in result.output
    assert "1,331,459" in result.output


def test_models_json_lists_exactly_the_six_with_counts():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0
    records = json.loads(result.output)
    assert [r["name"] for r in records] == list_archs()
    assert len(records) == 6
    for r in records:
        assert r["parameters"] == default_parameter_count(r["name"]) > 0
        assert isinstance(r["pretrained"], bool)


@pytest.mark.parametrize("command", [["--help"], ["models", "--json"]])
def test_python_dash_m_runs_the_same_app(command):
    proc = subprocess.run(
        [sys.executable, "-m", "deblurcli", *command], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["blur", "train", "eval", "restore", "models", "weights"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0
    assert len(result.output.strip()) > 40


def _raise_in_a_command(error: Exception):
    """Run a real Typer command wrapped in ``friendly_errors`` that raises ``error``, --as-json."""
    import typer

    from deblurcli.cli._common import friendly_errors

    @friendly_errors
    def command(as_json: bool = False) -> None:
        raise error

    runner_app = typer.Typer()
    runner_app.command()(command)
    return CliRunner().invoke(runner_app, ["--as-json"])


def test_usage_error_names_the_parameter_in_the_library_and_the_flag_in_the_cli():
    from deblurcli.errors import UsageError

    error = UsageError("must be >= 0", option="tile_overlap")
    assert str(error) == "tile_overlap must be >= 0"
    assert error.for_cli() == "--tile-overlap must be >= 0"
    assert UsageError("plain").for_cli() == "plain"
    inside = UsageError("unknown {option} 'x'", option="degrade")
    assert (str(inside), inside.for_cli()) == ("unknown degrade 'x'", "unknown --degrade 'x'")

    result = _raise_in_a_command(error)
    assert result.exit_code == 2
    assert json.loads(result.stdout) == {"error": "--tile-overlap must be >= 0", "exit_code": 2}
    assert "--tile-overlap must be >= 0" in result.stderr


def test_any_error_names_mentioned_parameters_in_the_library_and_flags_in_the_cli():
    import pickle

    from deblurcli.errors import TrainingDivergedError, UsageError

    both = UsageError("{init} and {resume} exclude each other", mentions=("init", "resume"))
    assert str(both) == "init and resume exclude each other"
    assert both.for_cli() == "--init and --resume exclude each other"
    # A runtime error names parameters too; braces that mark no mention stay as they are.
    error = TrainingDivergedError(
        "loss became nan in {a,b}; try a lower {lr} or {precision} fp32",
        mentions=("lr", "precision"),
    )
    assert str(error) == "loss became nan in {a,b}; try a lower lr or precision fp32"
    assert error.for_cli() == "loss became nan in {a,b}; try a lower --lr or --precision fp32"
    # option and mentions together; the naming survives pickling (worker processes).
    width = UsageError("does not apply with {init}", option="tile_size", mentions=("init",))
    assert str(width) == "tile_size does not apply with init"
    copy = pickle.loads(pickle.dumps(width))
    assert (type(copy), copy.for_cli()) == (UsageError, "--tile-size does not apply with --init")
    # extended(): a new error of the same class, both parts keep their naming.
    longer = width.extended("run: ", "; drop {resume}", mentions=("resume",))
    assert isinstance(longer, UsageError) and longer.exit_code == 2
    assert str(longer) == "run: tile_size does not apply with init; drop resume"
    assert longer.for_cli() == "run: --tile-size does not apply with --init; drop --resume"

    result = _raise_in_a_command(error)
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"error": error.for_cli(), "exit_code": 1}
    assert error.for_cli() in result.stderr


def test_library_warnings_name_parameters_and_the_cli_prints_flags(caplog):
    import logging

    from deblurcli.errors import Note

    note = Note("%s: {vgg_weights} ignored (add {loss})", mentions=("vgg_weights", "loss"))
    with caplog.at_level("WARNING"):
        logging.getLogger("deblurcli.test").warning(note, "run")
    assert caplog.records[-1].getMessage() == "run: vgg_weights ignored (add loss)"
    # The deblur command's log handler prints the flags.
    code = (
        "import logging, deblurcli.cli as cli\n"
        "from deblurcli.errors import Note\n"
        "note = Note('%s: {vgg_weights} ignored (add {loss})', mentions=('vgg_weights', 'loss'))\n"
        "from deblurcli.errors import ImageReadError\n"
        "error = ImageReadError('x.png: raise {max_pixels}', mentions=('max_pixels',))\n"
        "cli.app = lambda: logging.getLogger('deblurcli.x').warning(note, error)\n"
        "cli.main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    expected = "warning: x.png: raise --max-pixels: --vgg-weights ignored (add --loss)"
    assert proc.stderr.strip() == expected
