"""Moved to `convnext.inference.robustness` (using a trained model lives in `convnext.inference`)."""
from ..inference.robustness import *  # noqa: F401,F403
from ..inference.robustness import __all__, cmd_benchmark  # noqa: F401
