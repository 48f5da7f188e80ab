"""``deblur models``: the registered architectures."""

from __future__ import annotations

import json

import typer
from rich import box
from rich.table import Table

from deblurcli.archs import default_parameter_count, get_spec, list_archs, model_config
from deblurcli.cli._common import console, friendly_errors
from deblurcli.weights.manifest import find_pretrained, pretrained_archs


def _shipped_parameters(name: str) -> int | None:
    """Parameters of the config the arch's default pretrained model uses (None: none ships)."""
    entry = find_pretrained(name)
    if entry is None:
        return None
    return default_parameter_count(name, **model_config(name, entry.config))


def describe_models() -> list[dict[str, object]]:
    """One record per registered architecture (what ``deblur models --json`` prints).

    ``parameters`` is the paper's configuration (the arch's default); ``shipped_parameters``
    the configuration of the pretrained model that ships (None when none does).
    """
    from deblurcli.training.recipes import recipe_for_arch

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
                "shipped_parameters": _shipped_parameters(name),
                "size_multiple": spec.size_multiple,
                "input_size": spec.size_rule(),
                "fp16_safe": spec.fp16_safe,
                "bf16_safe": spec.bf16_safe,
                "tile_overlap": spec.tile_overlap,
                "has_discriminator": recipe_for_arch(name).adversarial is not None,
                "default_config": spec.default_config,
                "pretrained": name in available,
            }
        )
    return records


@friendly_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the six deblurring architectures: paper, parameters, pretrained weights.

    "params" counts the configuration of the pretrained model that ships; "paper config" the
    configuration the paper describes (what 'deblur train' builds without --config).
    """
    records = describe_models()
    if as_json:
        typer.echo(json.dumps(records, indent=2))
        return
    table = Table(title="deblurcli architectures", box=box.SIMPLE_HEAD)
    table.add_column("name")
    table.add_column("paper")
    table.add_column("params", justify="right")
    table.add_column("paper config", justify="right")
    table.add_column("weights")
    for r in records:
        shipped = r["shipped_parameters"]
        table.add_row(
            str(r["name"]),
            str(r["source"]),
            "-" if shipped is None else f"{shipped:,}",
            f"{r['parameters']:,}",
            "[green]yes[/]" if r["pretrained"] else "no",
        )
    console.print(table)
    console.print(
        "params: the shipped pretrained model's configuration; paper config: the paper's "
        "(what 'deblur train' builds without --config). More: 'deblur models --json'.",
        highlight=False,
    )
    _print_external()


def _print_external() -> None:
    """The published families ``--model FILE`` also runs, when the zoo extra is installed."""
    from deblurcli.weights.zoo import external_families

    families = external_families()
    if not families:
        return
    table = Table(title="published checkpoints via spandrel (--model FILE; see docs/zoo.md)")
    table.add_column("name")
    table.add_column("architecture")
    for f in families:
        table.add_row(f["name"], f["title"])
    console.print(table)
