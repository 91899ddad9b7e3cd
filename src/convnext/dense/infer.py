"""Evaluate and run detectors and segmenters from `convnext train` checkpoints (`convnext eval`/`predict`).

    dense = load_dense("runs/det/checkpoint-best.pt")          # DenseLoaded: model, task, classes, img_size
    evaluate_dense(dense, "path/to/coco")                       # the 24 COCO numbers / mIoU, aAcc, per-class IoU
    predict_dense(dense, "photo.jpg", "pred.png", "pred.json")  # a drawn PNG and a JSON of the results
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, DataError

__all__ = ["DenseLoaded", "dense_task_of", "read_dense_checkpoint", "load_dense", "evaluate_dense", "predict_dense"]

_DENSE_ARCHS = {"detection": "detection", "upernet": "segmentation"}


@dataclass
class DenseLoaded:
    model: nn.Module  # eval mode
    task: str  # "detection" | "segmentation"
    classes: list[str]
    img_size: int  # shorter side (detection) / crop (segmentation) of the training run
    weights: str  # "ema" | "model"
    train_config: dict
    source: str


def dense_task_of(ckpt: dict) -> str | None:
    """The dense task of a checkpoint read with `read_checkpoint`, or None for a classifier."""
    arch = (ckpt.get("model_config") or {}).get("arch") if isinstance(ckpt.get("model_config"), dict) else None
    return ckpt.get("task") if ckpt.get("task") in ("detection", "segmentation") else _DENSE_ARCHS.get(arch)


def read_dense_checkpoint(path: str | os.PathLike | None) -> dict | None:
    """The checkpoint at `path` if it is a detection/segmentation training checkpoint, else None.

    Read memory-mapped: for a classifier (the other commands' case) only its keys and small values
    are read here, so its tensors are not read twice.
    """
    from ..weights.io import read_checkpoint

    if path is None or not Path(path).is_file():
        return None
    ckpt = read_checkpoint(path, mmap=True)
    return ckpt if dense_task_of(ckpt) else None


def load_dense(path: str | os.PathLike, weights: str = "auto", device: str | torch.device = "cpu",
               ckpt: dict | None = None) -> DenseLoaded:
    """A detector/segmenter from a `convnext train` checkpoint, with the weights its metrics belong to."""
    from ..models import build_model, config_from_dict
    from ..weights.io import read_checkpoint, select_weights

    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    task = dense_task_of(ckpt)
    if task is None:
        raise CheckpointError(f"{path}: not a detection or segmentation checkpoint of `convnext train`")
    sd, use = select_weights(ckpt, weights, source=str(path))  # the weights rule of every command
    model = build_model(config_from_dict(ckpt["model_config"]))
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model it describes ({str(e).splitlines()[0]})") from None
    train_config = ckpt.get("train_config") or {}
    return DenseLoaded(model=model.to(device).eval(), task=task, classes=list(ckpt.get("labels") or []),
                       img_size=int(train_config.get("img_size", 800 if task == "detection" else 512)),
                       weights=use, train_config=train_config, source=str(path))


def evaluate_dense(dense: DenseLoaded, data: str, *, img_size: int | None = None, batch_size: int = 2,
                   num_workers: int = 0, device: str | torch.device = "cpu", amp: str = "off",
                   multiscale: bool = False) -> dict:
    """The validation metrics of the training run, recomputed: COCO AP (detection) or mIoU (segmentation)."""
    from ..train.config import config_from_dict
    from ..train.distributed import DistInfo
    from ..train.tasks import get_task
    from ..train.trainer import make_eval_loader

    config = config_from_dict({**dense.train_config, "data": str(data), "img_size": img_size or dense.img_size,
                               "train_subset": None, "eval_every": 1, "resume": None})
    task = get_task(dense.task)
    if multiscale:
        if dense.task != "segmentation":
            raise DataError("--multi-scale: segmentation checkpoints only")
        task.multiscale = True
    td = task.build_data(config, train=False)
    if td.val is None:
        raise DataError(f"--data {data}: no validation split")
    if list(td.classes) != list(dense.classes):
        raise DataError(f"--data {data}: its {len(td.classes)} classes differ from the checkpoint's "
                        f"{len(dense.classes)} ({', '.join(td.classes[:3])}... vs {', '.join(dense.classes[:3])}...)")
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    loader = make_eval_loader(td.val, td.eval_batch_size or batch_size, num_workers, DistInfo(device=dev),
                              td.collate_eval)
    return task.evaluate(dense.model.to(dev), loader, dev, amp)


# A fixed, distinguishable colour per class (tab20 repeated), for boxes, masks and class maps.
def _palette(n: int) -> list[tuple[int, int, int]]:
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    return [tuple(int(255 * c) for c in cmap(i % 20)[:3]) for i in range(max(n, 1))]


@torch.no_grad()
def predict_dense(dense: DenseLoaded, image_path: str | os.PathLike, output: str | os.PathLike | None = None,
                  json_path: str | os.PathLike | None = None, *, score_thresh: float = 0.3,
                  img_size: int | None = None) -> dict:
    """Run the model on one image; draw the result into `output` (PNG) and write `json_path`.

    Detection: boxes (original pixels, xyxy), class names and scores of detections above
    `score_thresh`, masks drawn translucent. Segmentation: a colour-coded class map over the image
    and the fraction of pixels of each class.
    """
    import numpy as np
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    from ..data.transforms import to_rgb

    try:
        with Image.open(image_path) as im:
            rgb = to_rgb(im)
            orig = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)  # (3, H0, W0) uint8
    except (OSError, Image.DecompressionBombError) as e:
        raise DataError(f"{image_path}: unreadable image ({e})") from None
    h0, w0 = orig.shape[-2:]
    size = img_size or dense.img_size
    palette = _palette(len(dense.classes))
    device = next(dense.model.parameters()).device
    if dense.task == "detection":
        scale = min(size / min(h0, w0), size * 1333 / 800 / max(h0, w0))  # the eval transform's resize
        h, w = round(h0 * scale), round(w0 * scale)
        x = TF.resize(orig, [h, w], antialias=True).float().div(255).to(device)
        out = dense.model([x])[0]
        keep = out["scores"] >= score_thresh
        sy, sx = h0 / h, w0 / w
        boxes = out["boxes"][keep].cpu() * torch.tensor([sx, sy, sx, sy])
        labels = out["labels"][keep].cpu()
        scores = out["scores"][keep].cpu()
        names = [dense.classes[int(lb) - 1] if 0 < int(lb) <= len(dense.classes) else str(int(lb)) for lb in labels]
        result = {"image": str(image_path), "task": "detection", "score_thresh": score_thresh,
                  "detections": [{"label": n, "score": round(float(s), 4), "box": [round(float(v), 1) for v in b]}
                                 for n, s, b in zip(names, scores, boxes)]}
        drawn = orig
        if "masks" in out and keep.any():
            masks = torch.nn.functional.interpolate(out["masks"][keep].float().cpu(), size=(h0, w0),
                                                    mode="bilinear", align_corners=False)[:, 0] > 0.5
            drawn = draw_segmentation_masks(drawn, masks, alpha=0.45,
                                            colors=[palette[int(lb) - 1] for lb in labels])
        if keep.any():
            drawn = draw_bounding_boxes(drawn, boxes, labels=[f"{n} {s:.2f}" for n, s in zip(names, scores)],
                                        colors=[palette[int(lb) - 1] for lb in labels], width=2)
    else:
        from ..data import IMAGENET_MEAN, IMAGENET_STD
        from .seg_inference import slide_inference

        scale = min(4 * size / max(h0, w0), size / min(h0, w0))  # the validation resize to the base scale
        h, w = max(round(h0 * scale), 1), max(round(w0 * scale), 1)
        x = TF.resize(orig, [h, w], antialias=True).float().div(255)
        x = TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)[None].to(device)
        scores = slide_inference(dense.model, x, crop=size, stride=max(size * 2 // 3, 1),
                                 num_classes=len(dense.classes))
        scores = torch.nn.functional.interpolate(scores.float().cpu(), size=(h0, w0), mode="bilinear",
                                                 align_corners=False)
        pred = scores[0].argmax(0)  # (H0, W0)
        present = pred.unique().tolist()
        masks = torch.stack([pred == c for c in present])
        drawn = draw_segmentation_masks(orig, masks, alpha=0.55, colors=[palette[c] for c in present])
        counts = torch.bincount(pred.flatten(), minlength=len(dense.classes)).float() / pred.numel()
        result = {"image": str(image_path), "task": "segmentation",
                  "classes": {dense.classes[c]: round(float(counts[c]), 4) for c in present}}
    if output is not None:
        Image.fromarray(drawn.permute(1, 2, 0).numpy()).save(output)
        result["output"] = str(output)
    if json_path is not None:
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result

