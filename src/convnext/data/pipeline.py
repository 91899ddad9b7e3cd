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

__all__ = ["train_transform", "mixup_and_criterion"]


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
