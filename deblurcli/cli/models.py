"""``deblur models``: the registered architectures."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from deblurcli.archs import default_parameter_count, get_spec, list_archs
from deblurcli.cli._common import console, friendly_errors
from deblurcli.weights.manifest import pretrained_archs


def describe_models() -> list[dict[str, object]]:
    """One record per registered architecture (what ``deblur models --json`` prints)."""
    available = pretrained_archs()
    records = []
    for name in list_archs():
        spec = get_spec(name)
        records.append(
            {
                "name": name,
                "title": spec.title,
                "source": spec.source,
                "parameters": default_parameter_count(name),
                "size_multiple": spec.size_multiple,
                "input_size": spec.size_rule(),
                "fp16_safe": spec.fp16_safe,
                "bf16_safe": spec.bf16_safe,
                "tile_overlap": spec.tile_overlap,
                "has_discriminator": spec.discriminator is not None,
                "default_config": spec.default_config,
                "pretrained": name in available,
            }
        )
    return records


@friendly_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the six deblurring architectures: source paper, size, input rule, pretrained weights."""
    records = describe_models()
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title="deblurcli architectures")
    for col in ("name", "paper / source", "params", "input size", "pretrained"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for r in records:
        table.add_row(
            str(r["name"]),
            str(r["source"]),
            f"{r['parameters']:,}",
            str(r["input_size"]),
            "[green]yes[/]" if r["pretrained"] else "no",
        )
    console.print(table)
