"""The modernization-roadmap study (paper §2, Fig. 2): rerun every step on a dataset, tabulate and plot it.

The networks themselves live in `convnext.models.roadmap` (registered as `roadmap_<regime>_<step>`).
"""
from .experiment import run_experiment
from .results import StepResult, ladder, plot_roadmap, read_csv, write_csv, write_markdown

__all__ = ["StepResult", "ladder", "plot_roadmap", "read_csv", "run_experiment", "write_csv", "write_markdown"]
