"""Python API for inference: `load` any checkpoint we read, `predict` classes of images.

`convnext predict` is a thin printer over `iter_predictions`, so the command line and Python give
the same numbers. Images are decoded `batch_size` at a time: memory stays bounded by one batch
whatever the number of images.

    loaded = convnext.load("runs/x/checkpoint-best.pt")      # model, eval transform, classes, ...
    convnext.predict(loaded, ["cat.jpg", "dog.png"], topk=3)  # [[("cat", 0.91), ...], [...]]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import ConfigError, DataError, UserError

__all__ = ["Loaded", "load", "predict", "iter_predictions", "open_image", "expand_image_args"]


@dataclass
class Loaded:
    """A model ready for inference with everything needed to feed it (see `load`)."""

    model: Any  # nn.Module in eval mode
    transform: Callable  # PIL image -> (3, img_size, img_size) tensor, the paper's evaluation pipeline
    classes: list[str] | None  # class names (raw: escape them before printing), None if unknown
    img_size: int
    weights: str  # "ema" | "model": which weights of the checkpoint were loaded
    config: Any  # the model's config dataclass
    crop_pct: float | None = None  # None = the paper's rule (0.875 below 384, 1.0 from 384)
    source: str = ""  # the checkpoint path
    resolution_source: str = ""  # where img_size came from ("the checkpoint's training config", ...)
    report: Any = None  # the LoadReport; str() is a one-line summary


def _check_img_size(img_size: int, stride: int) -> None:
    if img_size <= 0 or img_size % stride:
        raise ConfigError(f"--img-size {img_size}: must be a positive multiple of {stride}")


def load(
    path: str | os.PathLike | None = None,
    *,
    weights: str = "auto",
    model_name: str | None = None,
    device: Any = "cpu",
    img_size: int | None = None,
    crop_pct: float | None = None,
    pretrained: bool | str | None = None,
) -> Loaded:
    """Load a checkpoint of any supported layout for inference.

    Args:
        path: a weight file or HF `from_pretrained` directory (ours, official, timm, torchvision, HF).
        weights: "auto" (the weights the checkpoint reports its accuracy for: EMA for our training
            checkpoints trained with EMA), "ema" or "model".
        model_name: build this registered model instead of the one the checkpoint describes.
        device: "cpu", "cuda", "auto", ... or a torch.device.
        img_size: evaluation resolution; default the checkpoint's (training config, convert
            metadata, or the pretrained registry for an official file name), else 224.
        crop_pct: centre-crop fraction; default the checkpoint's, else the paper's rule.
        pretrained: instead of `path`, the official weights of `model_name` (True, or a tag of
            `convnext.weights.list_pretrained(model_name)`), through torch's hub cache.
    """
    import torch

    from .data.imagenet_labels import labels_for
    from .data.transforms import eval_transform
    from .devices import resolve_device
    from .weights.io import CheckpointError
    from .weights.loading import from_checkpoint
    from .weights.pretrained import download_pretrained, eval_resolution, get_pretrained

    if pretrained:
        if model_name is None:
            raise UserError("--pretrained: name the model too (--model NAME, e.g. convnext_tiny)")
        if path is not None:
            raise UserError("--pretrained and --checkpoint: pass one of them")
        entry = get_pretrained(model_name, None if pretrained is True else str(pretrained))
        path, model_name = download_pretrained(entry), None  # the file's own name gives resolution
    if path is None:
        raise UserError("--checkpoint: no checkpoint given (or --pretrained with --model NAME)")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    try:
        model = from_checkpoint(path, weights=weights, model_name=model_name, device=dev).eval()
    except KeyError as e:  # unknown registered name, with suggestions
        raise UserError(f"--model: {e.args[0]}") from None
    info = model.checkpoint_info
    default_size, default_crop, res_source = eval_resolution(path, info.get("train_config"), info.get("resolution"))
    if img_size is None:
        img_size = default_size
        crop_pct = default_crop if crop_pct is None else crop_pct
    else:
        res_source = "--img-size"
    _check_img_size(img_size, getattr(model, "stride", 32))
    num_classes = getattr(model, "num_classes", 0)
    classes = info.get("labels") or labels_for(num_classes)
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{path}: {len(classes)} labels stored for a {num_classes}-class head")
    return Loaded(model=model, transform=eval_transform(img_size, crop_pct=crop_pct), classes=classes,
                  img_size=img_size, weights=info["weights"], config=getattr(model, "config", None),
                  crop_pct=crop_pct, source=str(path), resolution_source=res_source, report=info["report"])


def expand_image_args(args: Iterable[str | os.PathLike]) -> list[str]:
    """Command-line image arguments as files: a folder becomes its images (sorted, recursive).

    URLs and folders without images are errors; paths that do not exist are kept (`open_image`
    reports them per image, so the other images are still classified).
    """
    from .data.datasets import IMG_EXTENSIONS, list_images

    out = []
    for a in args:
        text = str(a)
        if "://" in text:
            raise DataError(f"{text}: URLs are not supported; download the file first")
        if Path(text).is_dir():
            found = list_images(text)
            if not found:
                raise DataError(f"{text}: folder holds no images ({', '.join(IMG_EXTENSIONS)})")
            out.extend(found)
        else:
            out.append(text)
    return out


def open_image(path: str | os.PathLike):
    """The decoded PIL image at `path`, or a one-line DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    text = str(path)
    if "://" in text:
        raise DataError(f"{text}: URLs are not supported; download the file first")
    p = Path(text)
    if p.is_dir():
        raise DataError(f"{p}: is a folder, not an image")
    if not p.is_file():
        raise DataError(f"image not found: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy()
    except Image.DecompressionBombError as e:
        raise DataError(f"{p}: refused, larger than Pillow's decompression-bomb limit ({e})") from None
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"{p}: not a readable image ({e})") from None


def _as_loaded(target: Any, device: Any = "cpu") -> Loaded:
    """`target` (a Loaded, a path, or a model) as a Loaded."""
    if isinstance(target, Loaded):
        return target
    if isinstance(target, (str, os.PathLike)):
        return load(target, device=device)
    from .data.imagenet_labels import labels_for
    from .data.transforms import eval_transform

    info = getattr(target, "checkpoint_info", {}) or {}
    num_classes = getattr(target, "num_classes", 0)
    return Loaded(model=target.eval(), transform=eval_transform(224), classes=info.get("labels") or
                  labels_for(num_classes), img_size=224, weights=info.get("weights", "model"),
                  config=getattr(target, "config", None))


def iter_predictions(
    target: Any, images: Iterable[Any], *, topk: int = 5, batch_size: int = 32
) -> Iterator[tuple[Any, list[tuple[str, float, int]] | None, str | None]]:
    """(image, [(class name, probability, index)] * k or None, error message or None) per image, in order.

    Images (paths, PIL images, or (3, S, S) tensors already preprocessed by `Loaded.transform`) are
    decoded and run `batch_size` at a time. An image that cannot be read yields its error and the
    others go on.
    """
    import torch
    from PIL import Image

    if topk < 1:
        raise ConfigError(f"--topk {topk}: must be >= 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be >= 1")
    loaded = _as_loaded(target)
    model = loaded.model
    num_classes = getattr(model, "num_classes", 0)
    if num_classes <= 0:
        raise UserError(f"{loaded.source or 'model'}: the model has no classifier head; nothing to predict")
    device = next(model.parameters()).device
    k = min(topk, num_classes)

    def prepare(item: Any) -> torch.Tensor:
        if isinstance(item, torch.Tensor):
            return item
        return loaded.transform(item if isinstance(item, Image.Image) else open_image(item))

    def run(batch: list) -> Iterator:
        inputs, errors = {}, {}
        for i, item in enumerate(batch):
            try:
                inputs[i] = prepare(item)
            except DataError as e:
                errors[i] = e.args[0]
        if inputs:
            with torch.no_grad():
                probs = model(torch.stack(list(inputs.values())).to(device)).float().softmax(dim=-1)  # (n, C)
            top_p, top_i = probs.topk(k, dim=-1)
            rows = dict(zip(inputs, zip(top_p.tolist(), top_i.tolist())))
        for i, item in enumerate(batch):
            if i in errors:
                yield item, None, errors[i]
            else:
                ps, idx = rows[i]
                names = [loaded.classes[j] if loaded.classes else f"class {j}" for j in idx]
                yield item, list(zip(names, ps, idx)), None

    batch: list = []
    for item in images:
        batch.append(item)
        if len(batch) == batch_size:
            yield from run(batch)
            batch = []
    if batch:
        yield from run(batch)


def predict(target: Any, images: Any, topk: int = 5, batch_size: int = 32) -> list[list[tuple[str, float]]]:
    """Top-k (class name, probability) for each image, as `convnext predict` prints them.

    Args:
        target: a `Loaded`, a checkpoint path (loaded with `load`), or a model (224px, paper preprocessing).
        images: paths, PIL images or preprocessed (3, S, S) tensors (a single one is accepted too).
        topk: classes per image.
        batch_size: images decoded and run at once (memory is bounded by one batch).

    Raises:
        DataError: an image that cannot be read (the CLI reports it and goes on instead).
    """
    import torch
    from PIL import Image

    if isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, torch.Tensor) and images.ndim == 3):
        images = [images]
    out = []
    for _, top, error in iter_predictions(target, images, topk=topk, batch_size=batch_size):
        if error is not None:
            raise DataError(error)
        out.append([(name, p) for name, p, _ in top])
    return out
