"""What the layers above `models/` and `train/` add to their registries, declared at the top.

Imports point down: `models/registry.py` and `train/tasks.py` name no module above them. This
top-layer module (imported by `convnext/__init__.py`, torch-free) registers lazy providers: the
module is imported the first time one of its names or architectures is looked up, so using a
classifier never imports the detection stack.

To add a model family living outside `models/`: one line in `MODEL_MODULES`. To add a task: one
line in `TASK_CLASSES`.
"""
from __future__ import annotations

import importlib

__all__ = ["MODEL_MODULES", "TASK_CLASSES", "install", "task_class"]

# module that registers models on import: (model-name globs, `arch` tags) it registers
MODEL_MODULES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "convnext.models.roadmap": (("roadmap_*",), ("roadmap",)),
    "convnext.dense.detection": (("mask_rcnn_*", "cascade_mask_rcnn_*"), ("detection",)),
    "convnext.dense.segmentation": (("upernet_*",), ("upernet",)),
}

# task name -> "module:Class" of the tasks that live above train/ (classification lives in train/tasks.py)
TASK_CLASSES: dict[str, str] = {
    "detection": "convnext.dense.tasks:DetectionTask",
    "segmentation": "convnext.dense.tasks:SegmentationTask",
}

_installed = False


def _importer(module: str):
    def load() -> None:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:  # a feature package left out of this build
            if e.name != module:
                raise
    return load


def task_class(name: str) -> type:
    """The class of a task named in `TASK_CLASSES` (its module imported now)."""
    module, attr = TASK_CLASSES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def _task_loader(name: str):
    def load() -> None:
        from .train.tasks import TASKS, register_task

        cls = task_class(name)  # its module may register it itself on import
        if name not in TASKS:
            register_task(name, cls)
    return load


def install() -> None:
    """Register the providers (once per process); called by `convnext/__init__.py`."""
    global _installed
    if _installed:
        return
    _installed = True
    from ._providers import add_model_provider, add_task_provider

    for module, (names, archs) in MODEL_MODULES.items():
        add_model_provider(_importer(module), names, archs)
    for name in TASK_CLASSES:
        add_task_provider(name, _task_loader(name))
