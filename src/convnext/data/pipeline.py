"""The paper's training augmentation, built from timm's data utilities (PAPER.md §3.3).

RandomResizedCrop (bicubic) + horizontal flip + RandAugment `rand-m9-mstd0.5-inc1` + Random
Erasing 0.25 in pixel mode, then per-batch Mixup 0.8 / CutMix 1.0 (switch 0.5) with label
smoothing 0.1 folded into the soft targets, trained with soft-target cross-entropy.
The colour-jitter argument of the official command is inert under RandAugment, so it is off here.
"""
from __future__ import annotations

from typing import Callable

from PIL import Image, ImageOps
from torch import nn

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["train_transform", "mixup_and_criterion", "loader_throughput"]


def train_transform(
    img_size: int,
    *,
    scale: tuple[float, float] = (0.08, 1.0),
    hflip: float = 0.5,
    randaug: str | None = "rand-m9-mstd0.5-inc1",
    reprob: float = 0.25,
    interpolation: str = "bicubic",
) -> Callable:
    """RGB PIL image -> augmented, normalised (3, img_size, img_size) tensor."""
    from timm.data import create_transform

    transform = create_transform(
        input_size=img_size,
        is_training=True,
        scale=scale,
        hflip=hflip,
        color_jitter=None,
        auto_augment=randaug or None,
        interpolation=interpolation,
        re_prob=reprob,
        re_mode="pixel",
        re_count=1,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    )
    for t in transform.transforms:  # RandAugment: make its posterize safe with current Pillow
        for op in getattr(t, "ops", []):
            if getattr(op.aug_fn, "__name__", "") == "posterize":
                op.aug_fn = _posterize
    return transform


def _posterize(img: Image.Image, bits_to_keep: int, **_) -> Image.Image:
    """timm's posterize, defined for every level it draws.

    With `mstd0.5` the magnitude can reach 10, where `PosterizeIncreasing` keeps 0 bits. Pillow of
    the paper's era returned a black image for that; current Pillow raises ValueError and the epoch
    would crash. Keep the old result: 0 bits -> all channels 0.
    """
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off: black
    return ImageOps.posterize(img, bits_to_keep)


def mixup_and_criterion(
    num_classes: int, *, mixup: float = 0.8, cutmix: float = 1.0, switch_prob: float = 0.5, smoothing: float = 0.1
) -> tuple[Callable | None, nn.Module]:
    """(timm Mixup or None, loss). With Mixup/CutMix on, smoothing lives in the soft targets."""
    if mixup > 0 or cutmix > 0:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0, switch_prob=switch_prob, mode="batch",
                    label_smoothing=smoothing, num_classes=num_classes)
        return mix, SoftTargetCrossEntropy()
    return None, nn.CrossEntropyLoss(label_smoothing=smoothing)


def loader_throughput(kind: str, jpegs: list[bytes], img_size: int, *, device: str = "cpu", batch_size: int = 64,
                      repeats: int = 3, num_workers: int = 1) -> dict:
    """Images/s of the training loader `--loader kind` ("workers", "device" or "dali") over `jpegs`.

    The images are written to a temporary ImageFolder (one class) and read with the paper's recipe
    (RandAugment, Random Erasing on; Mixup/CutMix are the trainer's). Each timed pass is one epoch
    over all images, after one untimed pass (worker start-up, DALI pipeline build, kernel warm-up);
    "device" decodes every image once when built, outside the timing, as in a run. `num_workers` is
    the DataLoader's worker processes or DALI's CPU threads.
    """
    import statistics
    import tempfile
    import time
    from pathlib import Path

    import torch

    from .datasets import ImageFolderDataset
    from .device_loader import DeviceAugment, build_loader

    dev = torch.device(device)
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, data in enumerate(jpegs):
            (folder / f"{i:06d}.jpg").write_bytes(data)
        dataset = ImageFolderDataset(tmp, train_transform(img_size))
        loader, built = build_loader(kind, dataset, batch_size=batch_size, sampler=list(range(len(dataset))),
                                     device=dev, augment=DeviceAugment(img_size), seed=0, num_workers=num_workers)
        for p in range(repeats + 1):
            start = time.perf_counter()
            n = 0
            for images, _, _ in loader:
                n += len(images.to(dev, non_blocking=True))
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if p:  # pass 0 warms up
                rates.append(n / (time.perf_counter() - start))
    return {"loader": built, "img_per_s": statistics.median(rates), "img_per_s_min": min(rates),
            "img_per_s_max": max(rates), "images": len(jpegs), "repeats": repeats, "batch_size": batch_size,
            "num_workers": num_workers, "device": str(dev)}
