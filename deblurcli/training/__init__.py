"""Training: per-architecture recipes, losses, and the resumable, distributed loop."""

from deblurcli.training.recipes import RECIPES, LossTerm, Recipe, get_recipe, recipe_for_arch
from deblurcli.training.trainer import TrainConfig, TrainResult, train

__all__ = [
    "RECIPES",
    "LossTerm",
    "Recipe",
    "TrainConfig",
    "TrainResult",
    "get_recipe",
    "recipe_for_arch",
    "train",
]
