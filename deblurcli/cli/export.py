"""``deblur export``: write a model as an ONNX file (issue #18)."""

from __future__ import annotations

from pathlib import Path

import typer

from deblurcli.cli._common import console, friendly_errors
from deblurcli.errors import UsageError
from deblurcli.inference.onnx import DEFAULT_OPSET, export_onnx


@friendly_errors
def export(
    model: str = typer.Argument(
        ..., help="Manifest name, checkpoint path (deblurcli or spandrel) or hf://owner/repo."
    ),
    output: Path = typer.Option(..., "--output", "-o", help="The .onnx file to write."),
    fp16: bool = typer.Option(False, "--fp16", help="Store fp16 weights (input/output stay fp32)."),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", min=17, help="ONNX opset version."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing file."),
) -> None:
    """Export MODEL to ONNX: dynamic height and width, arch/config/size multiple in metadata.

    Run the file with `deblur restore --model FILE.onnx` (onnxruntime) or any ONNX runtime.
    """
    if output.suffix.lower() != ".onnx":
        raise UsageError(f"--output {output}: the file name must end in .onnx")
    if output.exists() and not overwrite:
        raise UsageError(f"--output {output} exists; pass --overwrite to replace it")
    from deblurcli.weights.resolve import load_model

    net = load_model(model)
    path = export_onnx(net, output, fp16=fp16, opset=opset)
    size = path.stat().st_size / 1e6
    console.print(
        f"wrote {path} ({net.arch_name}, opset {opset}, {'fp16' if fp16 else 'fp32'}, "
        f"{size:.1f} MB)",
        highlight=False,
    )
