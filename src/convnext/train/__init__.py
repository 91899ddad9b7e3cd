"""Training and evaluation with the paper's recipe (PAPER.md §3): `TrainConfig`, `run`, recipes.

Names are imported on first use (`convnext._lazy`): `convnext train --help` builds its parser from
`train.config` without importing torch.
"""
from __future__ import annotations

from .._lazy import lazy_attributes

_PUBLIC: dict[str, str] = {
    **dict.fromkeys(("TrainConfig", "list_recipes", "load_config", "load_recipe"), "convnext.train.config"),
    **dict.fromkeys(("NonFiniteLossError", "evaluate", "train_one_epoch"), "convnext.train.engine"),
    "run": "convnext.train.trainer",
}

__all__ = sorted(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
