"""Training and evaluation with the paper's recipe (PAPER.md §3): `TrainConfig`, `run`, recipes."""
from .config import TrainConfig, list_recipes, load_config, load_recipe
from .engine import NonFiniteLossError, evaluate, train_one_epoch
from .trainer import run

__all__ = ["NonFiniteLossError", "TrainConfig", "evaluate", "list_recipes", "load_config", "load_recipe", "run",
           "train_one_epoch"]
