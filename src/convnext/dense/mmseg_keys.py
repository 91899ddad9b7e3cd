"""mmseg UperNet ConvNeXt checkpoints <-> our `UperNet`.

Both backbone namings load: FAIR's `semantic_segmentation/` files (e.g. `upernet_convnext_tiny_1k_512x512.pth`,
block layers `dwconv/pwconv1/pwconv2`) and OpenMMLab's (the mmseg 0.x/1.x zoo files and whatever an
mmseg Runner saves; mmcls / mmpretrain names `depthwise_conv/pointwise_conv1/pointwise_conv2`), told
apart from the keys. The key map (an `EncoderDecoder` with `UPerHead` + `FCNHead`, every ConvModule
`conv` + `bn`) is a rule table on the engine of `convnext.weights.convert`, declared with the full
table in `convnext.weights.dense_files` (`MMSEG_HEAD_RULES`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from ..weights.convert import dense_naming
from ..weights.dense_files import MMSEG_HEAD_RULES, from_dense_layout, strict_load, to_dense_layout

__all__ = ["MMSEG_KEY_MAP", "from_mmseg", "to_mmseg", "load_mmseg_checkpoint", "is_mmseg_checkpoint"]

MMSEG_KEY_MAP = MMSEG_HEAD_RULES  # the head rules; the backbone's are `convert.DENSE_BACKBONE`


def from_mmseg(sd: Mapping[str, torch.Tensor], source: str = "<state dict>", naming: str | None = None
               ) -> dict[str, torch.Tensor]:
    """mmseg UperNet state dict -> ours (backbone naming "openmmlab" | "fair" detected when None);
    a key outside the map is a CheckpointError naming it."""
    return to_dense_layout(sd, "mmseg", naming or dense_naming(sd), source)


def to_mmseg(sd: Mapping[str, torch.Tensor], source: str = "<state dict>", naming: str = "openmmlab"
             ) -> dict[str, torch.Tensor]:
    """Our UperNet state dict -> mmseg keys, backbone `naming` "openmmlab" (default: what mmseg 1.x
    with mmpretrain loads) or "fair" (FAIR's semantic_segmentation/ code)."""
    return from_dense_layout(sd, "mmseg", naming, source)


def is_mmseg_checkpoint(sd: Mapping[str, Any]) -> bool:
    """Sentinel keys of an mmseg UperNet checkpoint."""
    return "decode_head.conv_seg.weight" in sd and "backbone.downsample_layers.0.0.weight" in sd


def load_mmseg_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load a whole mmseg UperNet checkpoint (either naming) into `model` (a `UperNet`), strictly.

    Returns the checkpoint's `meta` (class names live in `CLASSES` (mmseg 0.x) or
    `dataset_meta.classes` (mmseg 1.x); {} when absent).
    Raises CheckpointError naming every key without counterpart, missing, or of another shape.
    """
    from ..weights.io import unwrap_state_dict
    from .backbone import read_any

    source, raw = read_any(checkpoint)
    sd = unwrap_state_dict(raw, source=source)  # mmseg wraps the tensors in "state_dict"
    if not is_mmseg_checkpoint(sd):
        raise CheckpointError(f"{source}: not an mmseg UperNet checkpoint (no decode_head.conv_seg.weight / "
                              f"backbone.downsample_layers.0.0.weight)")
    sd = from_mmseg(sd, source)
    strict_load(model, sd, source)
    meta = raw.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}
