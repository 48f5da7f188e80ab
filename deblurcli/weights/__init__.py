"""Weights: the checkpoint format, the manifest of pretrained models, and Hub resolution."""

from deblurcli._hashing import sha256_file
from deblurcli.weights.checkpoint import load_checkpoint, read_metadata, save_checkpoint
from deblurcli.weights.manifest import (
    PretrainedEntry,
    default_model_name,
    get_pretrained,
    list_pretrained,
    load_manifest,
    pretrained_archs,
)
from deblurcli.weights.resolve import load_model, resolve_weights

__all__ = [
    "PretrainedEntry",
    "default_model_name",
    "get_pretrained",
    "list_pretrained",
    "load_checkpoint",
    "load_manifest",
    "load_model",
    "pretrained_archs",
    "read_metadata",
    "resolve_weights",
    "save_checkpoint",
    "sha256_file",
]
