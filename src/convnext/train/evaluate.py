"""`convnext eval`: accuracy of a checkpoint with the paper's evaluation preprocessing (PAPER.md §3.4)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import build_dataset, eval_transform
from ..data.datasets import error_line
from ..devices import resolve_device
from ..errors import ConfigError, DataError
from ..weights.io import printable
from ..weights.pretrained import eval_resolution
from .distributed import DistInfo
from .engine import evaluate
from .trainer import make_eval_loader

__all__ = ["eval_size_and_crop", "evaluate_checkpoint", "load_trained_model"]


def load_trained_model(
    path: str | Path, weights: str = "auto", model_name: str | None = None
) -> tuple[nn.Module, dict]:
    """(model, info) from a `convnext train` checkpoint, or from any layout the weights library reads
    (files and HF directories alike: the same loader as `predict` and `export`).

    `weights`: "ema" | "model" | "auto" (the weights whose accuracy the checkpoint reports, see
    `convnext.weights.io.reported_weights`). `info` holds `labels` (or None), `weights` (which were
    loaded), `train_config` (or {}), `resolution` (or None) and `report` (the LoadReport).
    """
    from ..weights.loading import from_checkpoint

    try:
        model = from_checkpoint(path, weights=weights, model_name=model_name)
    except KeyError as e:  # unknown --model, with suggestions
        raise ConfigError(f"--model: {e.args[0]}") from None
    info = model.checkpoint_info
    return model, {"labels": info["labels"], "weights": info["weights"], "train_config": info["train_config"] or {},
                   "resolution": info["resolution"], "report": info["report"]}


def eval_size_and_crop(checkpoint: str | Path, meta: dict, img_size: int | None, crop_pct: float | None
                       ) -> tuple[int, float | None]:
    """The (img_size, crop_pct) to evaluate at: the flags when given, else the checkpoint's own
    (`meta` from `load_trained_model`); crop None = the paper's rule for that size."""
    default_size, default_crop, _ = eval_resolution(checkpoint, meta["train_config"], meta.get("resolution"))
    img_size = img_size or default_size
    if crop_pct is None:
        crop_pct = default_crop if img_size == default_size else None
    return img_size, crop_pct


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str,
    *,
    img_size: int | None = None,
    crop_pct: float | None = None,
    batch_size: int = 100,
    weights: str = "auto",
    model_name: str | None = None,
    num_workers: int = 2,
    amp: str = "off",
    device: str | None = None,
    data_dir: str | None = None,
    strict_images: bool = False,
    progress: bool = True,
) -> dict:
    """Top-1/top-5 (percent) of `checkpoint` on the validation split of `data`."""
    model, meta = load_trained_model(checkpoint, weights, model_name)
    img_size, crop_pct = eval_size_and_crop(checkpoint, meta, img_size, crop_pct)
    dev = resolve_device(device)
    model.to(dev)

    labels = meta["labels"]
    dataset = build_dataset(data, "val", eval_transform(img_size, crop_pct=crop_pct), classes=None,
                            strict=strict_images, data_dir=data_dir)
    target_map = None
    if labels is not None and list(dataset.classes) != list(labels):
        missing = sorted(set(dataset.classes) - set(labels))
        if missing:
            raise DataError(f"--data {data}: class(es) {', '.join(printable(m) for m in missing[:5])} are not "
                            f"among the checkpoint's {len(labels)} labels")
        target_map = torch.tensor([labels.index(c) for c in dataset.classes])  # dataset index -> model index
    elif labels is None and getattr(model, "num_classes", len(dataset.classes)) < len(dataset.classes):
        raise DataError(f"--data {data} has {len(dataset.classes)} classes, the model only {model.num_classes}")

    loader = make_eval_loader(dataset, batch_size, num_workers, DistInfo(device=dev))
    from tqdm import tqdm

    batches = tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False)
    if target_map is not None:
        batches = ((x, target_map[y], bad) for x, y, bad in batches)
    try:
        res = evaluate(model, batches, dev, amp)
    except DataError as e:  # --strict-images: re-raised from a loader worker with its traceback as text
        raise DataError(error_line(e)) from None
    return {**res, "checkpoint": str(checkpoint), "data": data, "img_size": img_size, "weights": meta["weights"]}
