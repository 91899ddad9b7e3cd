"""mmdet ConvNeXt detector checkpoints <-> our detectors (Mask R-CNN "standard", Cascade Mask R-CNN "cascade").

Both backbone namings load: FAIR's `object_detection/` files (e.g. `cascade_mask_rcnn_convnext_tiny_1k_3x.pth`,
block layers `dwconv/pwconv1/pwconv2`) and OpenMMLab's (mmdet 2.x/3.x zoo files and whatever an
mmdet Runner saves; mmcls / mmpretrain names `depthwise_conv/pointwise_conv1/pointwise_conv2`), told
apart from the keys. The key map is a rule table on the engine of `convnext.weights.convert`; it is
declared, with the full table, in `convnext.weights.dense_files` (`MMDET_HEAD_RULES`). The only
tensor that changes is the classifier: mmdet puts background at the last of its C + 1 rows, we at row 0.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..weights.dense_files import MMDET_HEAD_RULES, from_dense_layout, mmdet_kind, strict_load, to_dense_layout
from ..weights.convert import dense_naming

__all__ = ["MMDET_KEY_MAP", "from_mmdet", "to_mmdet", "mmdet_layout", "load_mmdet_checkpoint"]

MMDET_KEY_MAP = MMDET_HEAD_RULES  # the head rules (Cascade form); the backbone's are `convert.DENSE_BACKBONE`
_LAYOUTS = ("cascade", "standard")


def mmdet_layout(sd: Mapping[str, Any]) -> str | None:
    """"cascade" / "standard" from sentinel keys, or None for a state dict that is neither."""
    return mmdet_kind(sd)


def from_mmdet(sd: Mapping[str, torch.Tensor], layout: str | None = None, source: str = "<state dict>",
               naming: str | None = None) -> dict[str, torch.Tensor]:
    """mmdet detector state dict -> ours; a key outside the map is a CheckpointError.

    Args:
        layout: "cascade" | "standard" (detected when None).
        naming: backbone naming "openmmlab" | "fair" (detected when None).
    """
    layout = layout or mmdet_layout(sd)
    if layout is None:
        raise CheckpointError(f"{source}: not an mmdet Mask R-CNN / Cascade Mask R-CNN ConvNeXt checkpoint (no "
                              f"backbone.downsample_layers.0.0.weight, rpn_head.rpn_conv.weight, roi_head.bbox_head.*fc_cls)")
    if layout not in _LAYOUTS:
        raise ValueError(f"mmdet layout must be one of {_LAYOUTS}, got {layout!r}")
    return to_dense_layout(sd, layout, naming or dense_naming(sd), source)


def to_mmdet(sd: Mapping[str, torch.Tensor], layout: str, source: str = "<state dict>",
             naming: str = "openmmlab") -> dict[str, torch.Tensor]:
    """Our detector state dict -> mmdet keys: `layout` "cascade" or "standard" (a 1-stage Mask R-CNN),
    backbone `naming` "openmmlab" (default: what mmdet 3.x with mmpretrain loads) or "fair"."""
    if layout not in _LAYOUTS:
        raise ValueError(f"mmdet layout must be one of {_LAYOUTS}, got {layout!r}")
    return from_dense_layout(sd, layout, naming, source)


def load_mmdet_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load a whole mmdet checkpoint (backbone + neck + RPN + RoI heads, either naming) into a
    `ConvNeXtDetector`, strictly.

    Returns the checkpoint's `meta` (class names live in `CLASSES` (mmdet 2.x) or
    `dataset_meta.classes` (mmdet 3.x); {} when absent).
    Raises CheckpointError naming every key without counterpart, missing, or of another shape.
    """
    from ..weights.io import unwrap_state_dict
    from .backbone import read_any

    source, raw = read_any(checkpoint)
    sd = from_mmdet(unwrap_state_dict(raw, source=source), source=source)  # mmdet wraps tensors in "state_dict"
    strict_load(model, sd, source)
    meta = raw.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}
