"""Moved to `convnext.inference` (using a trained model has one room); kept for older callers.

`evaluate_checkpoint(path, data, ...)` = `convnext.inference.evaluate(load(path, ...), data, ...)`.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["eval_size_and_crop", "evaluate_checkpoint", "load_trained_model"]


def load_trained_model(path: str | Path, weights: str = "auto", model_name: str | None = None):
    """(model, info) of a classifier checkpoint: info holds labels, weights, train_config, resolution, report."""
    from ..inference.loaded import load

    loaded = load(path, weights=weights, model_name=model_name)
    info = getattr(loaded.model, "checkpoint_info", {})
    return loaded.model, {"labels": info.get("labels"), "weights": loaded.weights,
                          "train_config": loaded.train_config, "resolution": info.get("resolution"),
                          "report": loaded.report}


def eval_size_and_crop(checkpoint: str | Path, meta: dict, img_size: int | None, crop_pct: float | None
                       ) -> tuple[int, float | None]:
    """The (img_size, crop_pct) to evaluate at (`convnext.inference.resolve_resolution`)."""
    from ..inference.loaded import resolve_resolution
    from ..weights.pretrained import eval_resolution

    default_size, default_crop, _ = eval_resolution(checkpoint, meta["train_config"], meta.get("resolution"))
    return resolve_resolution(default_size, default_crop, img_size, crop_pct)


def evaluate_checkpoint(checkpoint: str | Path, data: str, *, img_size: int | None = None,
                        crop_pct: float | None = None, weights: str = "auto", model_name: str | None = None,
                        device: str | None = None, **kw) -> dict:
    """Top-1/top-5 (percent) of `checkpoint` on the validation split of `data`."""
    from ..devices import resolve_device
    from ..inference.evaluate import evaluate_classification
    from ..inference.loaded import load

    loaded = load(checkpoint, weights=weights, model_name=model_name, img_size=img_size, crop_pct=crop_pct,
                  device=resolve_device(device))
    return evaluate_classification(loaded, data, **kw)
