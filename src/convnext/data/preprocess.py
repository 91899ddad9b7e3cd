"""Each task's evaluation preprocessing, as one function shared by its dataset and by `predict`.

`convnext eval` (through the datasets' eval transforms) and `convnext predict` call the same
functions below, so the network sees the same pixels from both (tests/inference/ checks it):

- classification: `eval_transform` (data/transforms.py), the paper's resize + centre crop.
- detection: `detection_eval_transform(img_size)`: shorter side to img_size, longer side at most
  1333 * img_size / 800 (MMDetection's test scale (1333, 800), scaled), torchvision's floor rounding.
- segmentation: `segmentation_eval_image(image, crop)`: mmcv `imrescale` to the base scale
  (4 * crop, crop) keeping the aspect ratio, sizes rounded half up (`int(x + 0.5)`), bilinear
  without antialiasing (cv2.INTER_LINEAR), ImageNet normalisation on 0..255 values.
"""
from __future__ import annotations

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DET_REF_SIZE", "DET_MAX_SIZE", "detection_eval_transform", "rescale_size", "resize_bilinear",
    "normalize_255", "segmentation_base_scale", "segmentation_eval_image",
]

DET_REF_SIZE = 800  # MMDetection's test scale (1333, 800): shorter side 800, longer at most 1333
DET_MAX_SIZE = 1333
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def detection_eval_transform(img_size: int = DET_REF_SIZE) -> v2.Compose:
    """(3, H0, W0) uint8 image (plus optional tv_tensors target) -> float [0, 1] image at the test scale."""
    return v2.Compose([
        v2.Resize(img_size, max_size=round(DET_MAX_SIZE * img_size / DET_REF_SIZE)),
        v2.ToDtype(torch.float32, scale=True),
    ])


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H', W') fitting inside `scale` = (long, short) edges, aspect ratio kept (mmcv imrescale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear without antialiasing, as cv2.INTER_LINEAR in mmcv."""
    return TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


def normalize_255(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (3, H, W) float image in 0..255."""
    return (image - _MEAN) / _STD


def segmentation_base_scale(crop: int) -> tuple[int, int]:
    """(W, H) base scale of the ADE20K pipeline for a crop: (2048, 512) at 512."""
    return 4 * crop, crop


def segmentation_eval_image(image: torch.Tensor, base_scale: tuple[int, int]) -> torch.Tensor:
    """(3, H0, W0) float RGB 0..255 -> normalised (3, H, W) at the base scale (the validation transform)."""
    size = rescale_size(*image.shape[-2:], base_scale)
    return normalize_255(resize_bilinear(image, size))
