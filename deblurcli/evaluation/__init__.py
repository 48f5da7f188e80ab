"""Evaluation: score models and classical baselines, write reports, build the benchmark."""

from deblurcli.evaluation.runner import EvalOptions, EvalResult, RowSummary, evaluate

__all__ = ["EvalOptions", "EvalResult", "RowSummary", "evaluate"]
