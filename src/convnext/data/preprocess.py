"""Each task's evaluation preprocessing, as one function shared by its dataset and by `predict`.

`convnext eval` (through the datasets' eval transforms) and `convnext predict` call the same
functions below, so the network sees the same pixels from both (tests/inference/ checks it):

- classification: `eval_transform` (data/transforms.py), the paper's resize + centre crop.
- detection: `detection_eval_transform(img_size)`: mmdet 3's test `Resize(scale=(1333, 800),
  keep_ratio=True)` with the scale taken to (round(1333 * img_size / 800), img_size): mmcv `imrescale`.
- segmentation: `segmentation_eval_image(image, crop)`: mmcv `imrescale` to the base scale
  (4 * crop, crop), ImageNet normalisation on 0..255 values.

mmcv `imrescale` (both tasks): the largest size inside the scale's (long, short) edges keeping the
aspect ratio, sides rounded half up (`int(x * factor + 0.5)`, `rescale_size`), then `imresize`:
cv2.resize(INTER_LINEAR) of the uint8 HWC image, uint8 out (`imresize` below, the same call, so the
pixels are mmcv's exactly). Without OpenCV the resize falls back to PyTorch bilinear (no
antialiasing) on float, rounded to uint8: within one grey level of cv2's fixed-point result.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .transforms import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "DET_REF_SIZE", "DET_MAX_SIZE", "DetectionTestResize", "detection_eval_transform", "detection_scale",
    "imresize", "rescale_size", "resize_bilinear", "normalize_255", "segmentation_base_scale", "segmentation_eval_image",
]

DET_REF_SIZE = 800  # MMDetection's test scale (1333, 800): shorter side 800, longer at most 1333
DET_MAX_SIZE = 1333
_MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
_STD = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255


def detection_scale(img_size: int = DET_REF_SIZE) -> tuple[int, int]:
    """(long, short) edges of the test scale: mmdet's (1333, 800) at 800, both scaled by img_size / 800."""
    return round(DET_MAX_SIZE * img_size / DET_REF_SIZE), img_size


def detection_eval_transform(img_size: int = DET_REF_SIZE) -> v2.Compose:
    """(3, H0, W0) uint8 image (plus optional tv_tensors target) -> float [0, 1] image at the test scale."""
    return v2.Compose([DetectionTestResize(detection_scale(img_size)), v2.ToDtype(torch.float32, scale=True)])


def rescale_size(h: int, w: int, scale: tuple[int, int]) -> tuple[int, int]:
    """(H', W') fitting inside `scale` = (long, short) edges, aspect ratio kept (mmcv imrescale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _cv2() -> Any:
    try:
        import cv2
    except ImportError:
        return None
    return cv2


def imresize(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) image -> (C, h, w) for size = (h, w), as mmcv `imresize(interpolation='bilinear')`:
    cv2.resize(INTER_LINEAR) on the HWC array, uint8 in -> uint8 out (float32 stays float32).

    Without OpenCV: PyTorch bilinear without antialiasing on float, rounded back to uint8 for a uint8
    image (cv2 rounds its fixed-point sums: the two differ by at most one level).
    """
    h, w = int(size[0]), int(size[1])
    cv2 = _cv2()
    if cv2 is not None and image.dtype in (torch.uint8, torch.float32) and 1 <= image.shape[0] <= 512:
        arr = np.ascontiguousarray(image.detach().cpu().permute(1, 2, 0).numpy())
        out = cv2.resize(arr, (w, h), interpolation=cv2.INTER_LINEAR)
        out = out.reshape(h, w, image.shape[0])  # cv2 drops a single channel
        return torch.from_numpy(out).permute(2, 0, 1).contiguous().to(image.device)
    out = F.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False, antialias=False)[0]
    if image.dtype == torch.uint8:
        return out.round_().clamp_(0, 255).to(torch.uint8)
    return out.to(image.dtype) if image.dtype.is_floating_point else out


class DetectionTestResize(v2.Transform):
    """mmdet's test `Resize(scale, keep_ratio=True)`: the image by mmcv `imrescale` (`rescale_size`,
    then `imresize`), boxes scaled by the per-axis factors new / old (mmdet's `scale_factor`), masks
    by the mask type's nearest-neighbour resize. tv_tensors targets move with the image."""

    def __init__(self, scale: tuple[int, int]):
        super().__init__()
        self.scale = (int(scale[0]), int(scale[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        from PIL import Image

        images = [x for x in flat_inputs if isinstance(x, (tv_tensors.Image, Image.Image))]
        plain = [x for x in flat_inputs if isinstance(x, torch.Tensor) and not isinstance(x, tv_tensors.TVTensor)]
        h, w = TF.get_size((images or plain)[0])
        return dict(size=rescale_size(h, w, self.scale))

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        from PIL import Image

        size = params["size"]
        if isinstance(inpt, (tv_tensors.BoundingBoxes, tv_tensors.Mask)):
            return TF.resize(inpt, list(size))
        if isinstance(inpt, tv_tensors.TVTensor) and not isinstance(inpt, tv_tensors.Image):
            return TF.resize(inpt, list(size), antialias=False)  # other kinds (keypoints, video): torchvision's
        if isinstance(inpt, Image.Image):
            pil = inpt if inpt.mode in ("L", "RGB", "RGBA") else inpt.convert("RGB")
            arr = torch.from_numpy(np.array(pil, dtype=np.uint8).reshape(pil.height, pil.width, -1))
            out = imresize(arr.permute(2, 0, 1), size).permute(1, 2, 0).numpy()
            return Image.fromarray(out[..., 0] if out.shape[-1] == 1 else out)
        out = imresize(inpt.as_subclass(torch.Tensor), size)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.TVTensor) else out

    # torchvision < 0.21 calls these private names
    _get_params, _transform = make_params, transform


def resize_bilinear(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear without antialiasing on float (cv2.INTER_LINEAR's formula, without its uint8 rounding)."""
    return TF.resize(image, list(size), interpolation=TF.InterpolationMode.BILINEAR, antialias=False)


def normalize_255(image: torch.Tensor) -> torch.Tensor:
    """ImageNet normalisation of a (3, H, W) float image in 0..255."""
    return (image - _MEAN) / _STD


def segmentation_base_scale(crop: int) -> tuple[int, int]:
    """(W, H) base scale of the ADE20K pipeline for a crop: (2048, 512) at 512."""
    return 4 * crop, crop


def _whole_uint8(image: torch.Tensor) -> torch.Tensor:
    """A decoded image (uint8, or float holding whole 0..255 values) as uint8; other floats unchanged."""
    if image.dtype == torch.uint8:
        return image
    image = image.float()
    if bool(((image >= 0) & (image <= 255) & (image == image.round())).all()):
        return image.to(torch.uint8)
    return image


def segmentation_eval_image(image: torch.Tensor, base_scale: tuple[int, int]) -> torch.Tensor:
    """(3, H0, W0) RGB 0..255 (uint8, or float of a decoded image) -> normalised float (3, H, W) at the
    base scale (the validation transform): mmcv `imrescale` on the uint8 image, as mmseg's test Resize."""
    size = rescale_size(*image.shape[-2:], base_scale)
    return normalize_255(imresize(_whole_uint8(image), size).float())
