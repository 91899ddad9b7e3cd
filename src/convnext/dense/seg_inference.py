"""Test-time inference for semantic segmentation, as the paper's ADE20K evaluation (PAPER.md §4.2).

- Single scale ("mIoU ss"): mmseg's sliding window, 512 x 512 crops with stride 341 (640 / 426 for
  the 22K models); the logits of overlapping windows are averaged.
- Multi-scale + flip ("mIoU ms", the paper's main metric): the image rescaled by 0.5, 0.75, 1.0,
  1.25, 1.5, 1.75 and horizontally flipped; per view, sliding-window logits are resized to the
  output size and softmaxed; the probabilities of all 12 views are averaged (mmseg `aug_test`).

Images are normalised (B, 3, H, W) tensors, already at the base scale (see `SegValTransform`).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .upernet import resize

__all__ = ["slide_inference", "multiscale_inference", "MS_RATIOS"]

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _pair(x: int | Sequence[int]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


@torch.no_grad()
def slide_inference(model: nn.Module, image: torch.Tensor, crop: int | Sequence[int] = 512,
                    stride: int | Sequence[int] = 341, num_classes: int | None = None) -> torch.Tensor:
    """Average of the model's logits over overlapping crop windows -> (B, K, H, W).

    Windows start every `stride` pixels; the last row/column is shifted back to end at the border,
    and an image smaller than the crop is one window of its own size (mmseg `slide_inference`).
    """
    (ch, cw), (sh, sw) = _pair(crop), _pair(stride)
    b, _, h, w = image.shape
    k = num_classes if num_classes is not None else model.num_classes
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    out = image.new_zeros(b, k, h, w)
    count = image.new_zeros(1, 1, h, w)
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
            out[:, :, y1:y2, x1:x2] += model(image[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return out / count


@torch.no_grad()
def multiscale_inference(model: nn.Module, image: torch.Tensor, out_size: Sequence[int] | None = None, *,
                         ratios: Sequence[float] = MS_RATIOS, flip: bool = True, slide: bool = True,
                         crop: int | Sequence[int] = 512, stride: int | Sequence[int] = 341,
                         num_classes: int | None = None) -> torch.Tensor:
    """Class probabilities (B, K, *out_size) averaged over scales (and flips).

    Args:
        model: a segmentation model in eval mode returning logits at input resolution.
        image: normalised (B, 3, H, W) at the base scale.
        out_size: (H, W) of the output, e.g. the original label size (default: the image's).
        ratios: rescale factors of the image.
        flip: also run every scale on the horizontally flipped image.
        slide: sliding-window inference per view (else the whole view at once).
        crop, stride: sliding-window geometry.
    """
    out_size = tuple(out_size) if out_size is not None else tuple(image.shape[-2:])
    h, w = image.shape[-2:]
    total, views = None, 0
    for ratio in ratios:
        view = resize(image, (int(h * ratio + 0.5), int(w * ratio + 0.5)))
        for flipped in (False, True) if flip else (False,):
            x = view.flip(-1) if flipped else view
            logits = slide_inference(model, x, crop, stride, num_classes) if slide else model(x).float()
            prob = resize(logits, out_size).softmax(1)
            prob = prob.flip(-1) if flipped else prob
            total = prob if total is None else total + prob
            views += 1
    return total / views
