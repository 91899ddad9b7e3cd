"""Registration hooks filled from the top layer, read by the lower ones (no imports: torch-free).

Imports point down (STYLE.md, torchvision's `register_model`): `models/` must not know the modules
above it that register more models (dense detectors and segmenters, the roadmap networks). The top
layer (`convnext/__init__.py` through `convnext/_registry_plugins.py`) adds a provider here, a
function importing such a module, with the model-name globs and `arch` tags it registers; the
registry calls the providers it needs on the first lookup of a name or arch it does not hold. A
classifier lookup therefore imports no detection code. Tasks above `train/` (detection,
segmentation) are provided the same way: `train.tasks.get_task` calls `load_task(name)` first.
"""
from __future__ import annotations

import fnmatch
from typing import Callable

__all__ = ["add_model_provider", "take_model_providers", "add_task_provider", "load_task"]

# (load, name globs, arch tags); a provider is removed once called.
_MODEL_PROVIDERS: list[tuple[Callable[[], object], tuple[str, ...], tuple[str, ...]]] = []


def add_model_provider(load: Callable[[], object], names: tuple[str, ...], archs: tuple[str, ...]) -> None:
    """Register `load` (imports a module that registers models) for the names/archs it provides."""
    _MODEL_PROVIDERS.append((load, tuple(names), tuple(archs)))


def take_model_providers(name: str | None = None, arch: str | None = None) -> list[Callable[[], object]]:
    """The pending providers for `name` or `arch` (all of them when both are None), removed from the list."""
    def wanted(names: tuple[str, ...], archs: tuple[str, ...]) -> bool:
        if name is None and arch is None:
            return True
        return (name is not None and any(fnmatch.fnmatchcase(name, g) for g in names)) or arch in archs

    taken = [p for p in _MODEL_PROVIDERS if wanted(p[1], p[2])]
    for p in taken:
        _MODEL_PROVIDERS.remove(p)
    return [p[0] for p in taken]


_TASK_PROVIDERS: dict[str, Callable[[], object]] = {}


def add_task_provider(name: str, load: Callable[[], object]) -> None:
    """Register `load`, which registers the task `name` (`train.tasks.register_task`) when called."""
    _TASK_PROVIDERS[name] = load


def load_task(name: str) -> None:
    """Run the provider of task `name` if one is pending (no-op otherwise)."""
    load = _TASK_PROVIDERS.pop(name, None)
    if load is not None:
        load()
