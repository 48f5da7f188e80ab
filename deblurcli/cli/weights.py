"""``deblur weights``: list, download, verify and locate pretrained weights."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from deblurcli.cli._common import console, err_console, fail, friendly_errors, say
from deblurcli.errors import DeblurError, UsageError, WeightsUnavailableError
from deblurcli.weights.inventory import describe_pretrained, verify_local
from deblurcli.weights.manifest import get_pretrained, list_pretrained, manifest_path
from deblurcli.weights.resolve import local_weights, resolve_weights

app = typer.Typer(
    help="Pretrained weights: list, download, verify, locate and push them.",
    no_args_is_help=True,
)

_NONE_YET = "no pretrained weights are published yet (manifest: {path})"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def _gain(record: dict) -> str:
    gain = record["scores"].get("psnr_gain")
    return "-" if gain is None else f"{gain:+.2f} dB"


@app.command("list")
@friendly_errors
def list_weights(
    as_json: bool = typer.Option(False, "--json", help="Print every field as JSON."),
) -> None:
    """List pretrained models, one row each: name, arch, size, licence, gain, default.

    "mixed gain" is the PSNR gain over the blurry input on the built-in benchmark's mixed
    blur families. 'deblur weights show NAME' prints everything else about one model.
    """
    records = describe_pretrained()
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    if not records:
        console.print(_NONE_YET.format(path=manifest_path()), highlight=False)
        return
    table = Table(title="pretrained weights", box=box.SIMPLE_HEAD)
    for col in ("name", "arch"):  # never cut: the name is what the other commands take
        table.add_column(col, no_wrap=True, min_width=max(len(r[col]) for r in records))
    for col in ("size", "licence", "mixed gain", "default"):
        table.add_column(col, justify="right" if col in ("size", "mixed gain") else "left")
    for r in records:
        default = "model" if r["default_model"] else "arch" if r["default_for_arch"] else ""
        table.add_row(r["name"], r["arch"], _size(r["size"]), r["license"], _gain(r), default)
    console.print(table)
    console.print(
        "default: 'model' is used when --model is omitted, 'arch' when the arch name is "
        "given. Details: 'deblur weights show NAME'.",
        highlight=False,
    )


@app.command("show")
@friendly_errors
def show(
    name: str = typer.Argument(..., help="A manifest name (arch or arch.tag)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Everything the manifest says about NAME: file, checksum, data, recipe, every score."""
    wanted = get_pretrained(name).name
    record = next(r for r in describe_pretrained() if r["name"] == wanted)
    if as_json:
        typer.echo(json.dumps(record, indent=2))
        return
    scores = record.pop("scores")
    record["size"] = f"{_size(record['size'])} ({record['size']:,} bytes)"
    for key, value in record.items():
        shown = "-" if value is None or value == "" else str(value)
        console.print(f"[bold]{key}:[/] {shown}", highlight=False, soft_wrap=False)
    if scores:
        console.print("[bold]scores:[/]", highlight=False)
        for key, value in scores.items():
            console.print(f"  {key}: {value:g}", highlight=False)


@app.command("download")
@friendly_errors
def download(
    names: list[str] = typer.Argument(None, help="Manifest names or hf://owner/repo/file@rev."),
    all_: bool = typer.Option(False, "--all", help="Every model in the manifest."),
) -> None:
    """Download NAME (or --all) into the Hugging Face cache, checking sha256."""
    if bool(names) == all_:
        raise UsageError("give model NAME(s) or --all (not both)")
    if all_:
        names = [e.name for e in list_pretrained()]
        if not names:
            console.print(_NONE_YET.format(path=manifest_path()), highlight=False)
            return
    failed = 0
    for name in names:
        try:
            typer.echo(f"{name}: {resolve_weights(name)}")
        except DeblurError as exc:
            failed += 1
            say(f"[red]failed:[/] {exc.for_cli()}", err=True)
    if failed:
        fail(f"{failed} of {len(names)} downloads failed (see above)")


@app.command("verify")
@friendly_errors
def verify(
    names: list[str] = typer.Argument(None, help="Only these models (default: all)."),
) -> None:
    """Re-hash every locally available weights file against the manifest."""
    results = verify_local(names=names or None)
    for r in results:
        where = r.path if r.path else "not downloaded"
        color = {"ok": "green", "mismatch": "red", "missing": "dim"}[r.status]
        console.print(f"[{color}]{r.status:>8}[/] {r.name}  {where}", highlight=False)
    bad = [r for r in results if r.status == "mismatch"]
    if bad:
        # a shipped file is never re-downloaded (the package copy wins), so say what does fix it
        shipped = any(r.path == get_pretrained(r.name).package_path for r in bad)
        fail(
            f"{len(bad)} file(s) do not match the manifest: "
            + ", ".join(f"{r.name} ({r.path})" for r in bad)
            + "; run 'deblur weights download NAME' to fetch them again"
            + (" (files inside the package: reinstall deblurcli)" if shipped else "")
        )
    missing = [r.name for r in results if r.status == "missing"]
    if names and missing:  # asked about these files by name: their absence is a failure
        fail(
            f"not on this machine: {', '.join(missing)}; "
            f"run 'deblur weights download {missing[0]}' to fetch it"
        )
    if not results:
        console.print(_NONE_YET.format(path=manifest_path()), highlight=False)


@app.command("path")
@friendly_errors
def path(name: str = typer.Argument(..., help="A manifest name (arch or arch.tag).")) -> None:
    """Print the local path of NAME's weights file."""
    entry = get_pretrained(name)
    found = local_weights(entry)
    if found is None:
        raise WeightsUnavailableError(
            f"'{entry.name}' is not on this machine yet; run 'deblur weights download {entry.name}'"
        )
    typer.echo(str(found))


@app.command("push")
@friendly_errors
def push(
    source: str = typer.Argument(..., help="A 'deblur train' run folder or its .safetensors."),
    repo: str = typer.Option(..., "--repo", help="Hub model repository, owner/name."),
    revision: str = typer.Option("main", "--revision", help="Branch to commit to."),
    private: bool = typer.Option(False, "--private", help="Create the repository private."),
    name: str | None = typer.Option(
        None, "--name", help="Manifest name.", show_default="ARCH.<repo name>"
    ),
    license_: str = typer.Option("MIT", "--license", help="Licence of the weights."),
    eval_json: Path | None = typer.Option(
        None, "--eval", help="A 'deblur eval --json' result to put in the model card."
    ),
) -> None:
    """Upload a model, config.json and model card to the Hub; print its manifest entry."""
    from deblurcli.weights.publish import push_model

    result = None
    if eval_json is not None:
        try:
            result = json.loads(eval_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--eval {eval_json}: not a readable JSON file ({exc})") from None
    pushed = push_model(
        source, repo, branch=revision, private=private, name=name, license=license_,
        eval_result=result,
    )  # fmt: skip
    err_console.print(f"pushed {pushed.uri}; add this to weights_manifest.toml:", highlight=False)
    typer.echo(pushed.manifest_text, nl=False)
