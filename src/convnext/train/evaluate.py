"""`convnext eval`: accuracy of a checkpoint with the paper's evaluation preprocessing (PAPER.md §3.4)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import build_dataset, eval_transform
from ..models import build_model, config_from_dict
from ..weights.io import read_checkpoint
from ..weights.pretrained import eval_resolution
from .checkpoint import FORMAT
from .distributed import DistInfo
from .engine import evaluate
from .trainer import make_eval_loader

__all__ = ["eval_size_and_crop", "evaluate_checkpoint", "load_trained_model"]


def load_trained_model(
    path: str | Path, weights: str = "auto", model_name: str | None = None
) -> tuple[nn.Module, dict]:
    """(model, info) from a `convnext train` checkpoint, or from any layout the model library reads.

    `weights`: "ema" | "model" | "auto" (EMA when the checkpoint has it). `info` holds `labels`
    (or None), `weights` (which were loaded) and `train_config` (or {}).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--checkpoint {path} does not exist")
    ckpt = read_checkpoint(path)  # weights-only / safetensors; a CheckpointError (ValueError) says why not
    if ckpt.get("format") == FORMAT:
        if weights == "ema" and "model_ema" not in ckpt:
            raise ValueError(f"--checkpoint {path} has no EMA weights (trained without --ema); use --weights model")
        use_ema = weights == "ema" or (weights == "auto" and "model_ema" in ckpt)
        model = build_model(config_from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["model_ema" if use_ema else "model"])
        return model, {"labels": ckpt.get("labels"), "weights": "ema" if use_ema else "model",
                       "train_config": ckpt.get("train_config", {})}
    # Any other layout (official, timm, torchvision, HF, safetensors): the weights library decides.
    from ..models import create_model
    from ..weights import from_checkpoint

    use_ema = weights == "ema"
    if model_name is not None:
        from ..weights import load_state_dict_file

        sd = load_state_dict_file(path, ema=use_ema)
        head = next((v for k, v in sd.items() if k.endswith("head.weight") or k.endswith("fc.weight")), None)
        model = create_model(model_name, num_classes=head.shape[0] if head is not None else 1000, checkpoint=path)
    else:
        model = from_checkpoint(path, ema=use_ema)
    return model, {"labels": None, "weights": "ema" if use_ema else "model", "train_config": {}}


def eval_size_and_crop(checkpoint: str | Path, meta: dict, img_size: int | None, crop_pct: float | None
                       ) -> tuple[int, float | None]:
    """The (img_size, crop_pct) to evaluate at: the flags when given, else the checkpoint's own
    (`meta` from `load_trained_model`); crop None = the paper's rule for that size."""
    default_size, default_crop, _ = eval_resolution(checkpoint, meta["train_config"])
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
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(dev)

    labels = meta["labels"]
    dataset = build_dataset(data, "val", eval_transform(img_size, crop_pct=crop_pct), classes=None,
                            strict=strict_images, data_dir=data_dir)
    target_map = None
    if labels is not None and list(dataset.classes) != list(labels):
        missing = sorted(set(dataset.classes) - set(labels))
        if missing:
            raise ValueError(f"--data {data}: class(es) {', '.join(missing[:5])} are not among the checkpoint's "
                             f"{len(labels)} labels")
        target_map = torch.tensor([labels.index(c) for c in dataset.classes])  # dataset index -> model index
    elif labels is None and getattr(model, "num_classes", len(dataset.classes)) < len(dataset.classes):
        raise ValueError(f"--data {data} has {len(dataset.classes)} classes, the model only {model.num_classes}")

    loader = make_eval_loader(dataset, batch_size, num_workers, DistInfo(device=dev))
    from tqdm import tqdm

    batches = tqdm(loader, desc="eval", unit="batch", disable=not progress, leave=False)
    if target_map is not None:
        batches = ((x, target_map[y], bad) for x, y, bad in batches)
    res = evaluate(model, batches, dev, amp)
    return {**res, "checkpoint": str(checkpoint), "data": data, "img_size": img_size, "weights": meta["weights"]}
