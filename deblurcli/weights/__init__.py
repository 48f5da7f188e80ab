"""Weights: the checkpoint format, the manifest of pretrained models, and Hub resolution."""

from deblurcli.weights.checkpoint import load_checkpoint, read_metadata, save_checkpoint

__all__ = ["load_checkpoint", "read_metadata", "save_checkpoint"]
