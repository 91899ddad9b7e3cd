"""The modernization-roadmap study (paper §2, Fig. 2): rerun every step on a dataset, tabulate and plot it.

The networks themselves live in `convnext.models.roadmap` (registered as `roadmap_<regime>_<step>`).
Names are imported on first use, so the command's parser does not import torch.
"""
from .._lazy import lazy_attributes

_PUBLIC = {
    "run_experiment": "convnext.roadmap.experiment",
    **dict.fromkeys(("StepResult", "ladder", "plot_roadmap", "read_csv", "write_csv", "write_markdown"),
                    "convnext.roadmap.results"),
}
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
