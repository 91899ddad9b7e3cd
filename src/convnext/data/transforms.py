"""Evaluation preprocessing exactly as the paper (PAPER.md §3.4).

At < 384: bicubic resize of the shorter side to size / 0.875, centre crop `size`.
At >= 384: bicubic warp to size x size (crop ratio 1.0, aspect ratio not kept, as the official code).
Images of any mode (L, P, RGBA, CMYK, 16-bit...) are converted to RGB first.

Written with Pillow and torch only, pixel for pixel what torchvision's Resize / CenterCrop /
ToTensor / Normalize do on PIL images (tests/inference checks it): classifying an image does not
import torchvision, whose package import pulls in its whole detection stack.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DEFAULT_CROP_PCT", "EvalTransform", "eval_transform", "to_rgb"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875


# Single-channel modes wider than 8 bits. Pillow's own convert("RGB") clips them at 255, so a 16-bit
# grayscale PNG (mode "I;16", values 0..65535) came out nearly white.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale (8/16-bit), palette (incl. transparency) and CMYK images become 3-channel RGB.

    16-bit grayscale ("I;16*") is scaled by 255/65535. "I" (32-bit int) and "F" are what Pillow makes
    of 16-bit data too, but may also hold 8-bit values: they are scaled the same way only when some
    value exceeds 255. (16-bit RGB PNGs already open as 8-bit "RGB": Pillow keeps the high byte.)
    """
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        arr = np.asarray(img, dtype=np.float32)  # (H, W)
        if img.mode.startswith("I;16") or arr.max(initial=0) > 255:
            arr = arr / 257.0  # 65535 -> 255
        img = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img.convert("RGB")


_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST}


@dataclass(frozen=True)
class EvalTransform:
    """PIL image -> normalised (3, img_size, img_size) float tensor (see `eval_transform`)."""

    img_size: int
    crop_pct: float
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bicubic"

    def resize(self, img: Image.Image) -> Image.Image:
        """The geometric part: resize (shorter side to img_size / crop_pct) then centre crop, or a square warp."""
        size, resample = self.img_size, _PIL_FILTERS[self.interpolation]
        if self.crop_pct == 1.0:
            return img.resize((size, size), resample)
        short = int(size / self.crop_pct)
        w, h = img.size
        if w <= h:  # torchvision's rule: the longer side is truncated, not rounded
            new = (short, int(short * h / w))
        else:
            new = (int(short * w / h), short)
        if new != (w, h):
            img = img.resize(new, resample)
        w, h = img.size
        if w < size or h < size:  # torchvision pads with zeros before cropping
            canvas = Image.new(img.mode, (max(w, size), max(h, size)))
            canvas.paste(img, ((max(w, size) - w) // 2, (max(h, size) - h) // 2))
            img, (w, h) = canvas, canvas.size
        top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
        return img.crop((left, top, left + size, top + size))

    def __call__(self, img: Image.Image):
        import torch

        arr = np.asarray(self.resize(to_rgb(img)), dtype=np.uint8)  # (S, S, 3)
        x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)  # ToTensor
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (x - mean) / std


def eval_transform(
    img_size: int = 224,
    crop_pct: float | None = None,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    interpolation: str = "bicubic",
) -> EvalTransform:
    """PIL image -> normalised (3, img_size, img_size) tensor, the paper's test-time pipeline.

    Args:
        img_size: output side.
        crop_pct: fraction of the resized image kept by the centre crop; default 0.875 below 384
            and 1.0 (square warp, no crop) at 384 and above.
        interpolation: "bicubic" (the paper's), "bilinear" or "nearest" (a torchvision
            InterpolationMode is accepted too).
    """
    if crop_pct is None:
        crop_pct = 1.0 if img_size >= 384 else DEFAULT_CROP_PCT
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    interpolation = getattr(interpolation, "value", interpolation)
    if interpolation not in _PIL_FILTERS:
        raise ValueError(f"interpolation must be one of {', '.join(_PIL_FILTERS)}, got {interpolation!r}")
    return EvalTransform(img_size, float(crop_pct), tuple(mean), tuple(std), interpolation)
