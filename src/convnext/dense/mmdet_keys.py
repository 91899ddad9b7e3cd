"""The official ConvNeXt MMDetection checkpoints (`object_detection/` of the paper's repo, e.g.
`cascade_mask_rcnn_convnext_tiny_1k_3x.pth`) <-> our detectors' state dicts, by a declared key map.

Two mmdet layouts: "cascade" (CascadeRoIHead: heads indexed by stage, `roi_head.bbox_head.{s}.*`)
and "standard" (Mask R-CNN's StandardRoIHead: one head, `roi_head.bbox_head.*`, our stage 0).

    ours                                            mmdet
    backbone.{downsample_layers,stages}.*           the same (the official ConvNeXt layout)
    backbone.stage_norms.{i}.*                      backbone.norm{i}.*
    neck.inner_blocks.{i}.0.*                       neck.lateral_convs.{i}.conv.*
    neck.layer_blocks.{i}.0.*                       neck.fpn_convs.{i}.conv.*
    rpn.head.conv.0.0.* / cls_logits.* / bbox_pred.*  rpn_head.rpn_conv.* / rpn_cls.* / rpn_reg.*
    roi_heads.box_heads.{s}.convs.{i}.{conv,bn}.*   roi_head.bbox_head.{s}.shared_convs.{i}.{conv,bn}.*
    roi_heads.box_heads.{s}.fcs.{i}.*               roi_head.bbox_head.{s}.shared_fcs.{i}.*
    roi_heads.box_heads.{s}.cls_score.*             roi_head.bbox_head.{s}.fc_cls.*   (background row first vs last)
    roi_heads.box_heads.{s}.bbox_pred.*             roi_head.bbox_head.{s}.fc_reg.*   (both 4 per object class)
    roi_heads.mask_heads.{s}.convs.{i}.*            roi_head.mask_head.{s}.convs.{i}.conv.*
    roi_heads.mask_heads.{s}.upsample.*             roi_head.mask_head.{s}.upsample.*
    roi_heads.mask_heads.{s}.logits.*               roi_head.mask_head.{s}.conv_logits.*

The only tensor that changes is the classifier: mmdet puts background at the last of its C + 1
rows, torchvision (and we) at row 0. `load_mmdet_checkpoint` loads a whole file strictly and names
every key without a counterpart.
"""
from __future__ import annotations

import os
import re
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["MMDET_KEY_MAP", "from_mmdet", "to_mmdet", "mmdet_layout", "load_mmdet_checkpoint"]


def _background_first(t: torch.Tensor, to_ours: bool) -> torch.Tensor:
    """Classifier rows (C + 1, ...): mmdet [classes..., background] <-> ours [background, classes...]."""
    return torch.cat([t[-1:], t[:-1]]) if to_ours else torch.cat([t[1:], t[:1]])


# (ours, mmdet cascade layout, tensor fix or None). `{s}` stage, `{i}` index; prefixes, first match wins.
MMDET_KEY_MAP: tuple[tuple[str, str, Callable | None], ...] = (
    ("backbone.stage_norms.{i}.", "backbone.norm{i}.", None),
    ("backbone.downsample_layers.", "backbone.downsample_layers.", None),
    ("backbone.stages.", "backbone.stages.", None),
    ("neck.inner_blocks.{i}.0.", "neck.lateral_convs.{i}.conv.", None),
    ("neck.layer_blocks.{i}.0.", "neck.fpn_convs.{i}.conv.", None),
    ("rpn.head.conv.0.0.", "rpn_head.rpn_conv.", None),
    ("rpn.head.cls_logits.", "rpn_head.rpn_cls.", None),
    ("rpn.head.bbox_pred.", "rpn_head.rpn_reg.", None),
    ("roi_heads.box_heads.{s}.convs.{i}.", "roi_head.bbox_head.{s}.shared_convs.{i}.", None),
    ("roi_heads.box_heads.{s}.fcs.{i}.", "roi_head.bbox_head.{s}.shared_fcs.{i}.", None),
    ("roi_heads.box_heads.{s}.cls_score.", "roi_head.bbox_head.{s}.fc_cls.", _background_first),
    ("roi_heads.box_heads.{s}.bbox_pred.", "roi_head.bbox_head.{s}.fc_reg.", None),
    ("roi_heads.mask_heads.{s}.convs.{i}.", "roi_head.mask_head.{s}.convs.{i}.conv.", None),
    ("roi_heads.mask_heads.{s}.upsample.", "roi_head.mask_head.{s}.upsample.", None),
    ("roi_heads.mask_heads.{s}.logits.", "roi_head.mask_head.{s}.conv_logits.", None),
)
_LAYOUTS = ("cascade", "standard")


def _pattern(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix).replace(r"\{s\}", r"(?P<s>\d+)").replace(r"\{i\}", r"(?P<i>\d+)"))


def _rules(layout: str):
    """(ours, theirs, fix) with regexes; "standard" = the cascade table with mmdet's stage index removed, our stage 0."""
    out = []
    for ours, theirs, fix in MMDET_KEY_MAP:
        if layout == "standard":
            ours, theirs = ours.replace("{s}", "0"), theirs.replace("{s}.", "")
        out.append((_pattern(ours), ours, _pattern(theirs), theirs, fix))
    return out


def _convert(sd: Mapping[str, torch.Tensor], layout: str, to_ours: bool, source: str) -> dict[str, torch.Tensor]:
    if layout not in _LAYOUTS:
        raise ValueError(f"mmdet layout must be one of {_LAYOUTS}, got {layout!r}")
    rules, out, unmatched = _rules(layout), {}, []
    for key, value in sd.items():
        for ours_re, ours, theirs_re, theirs, fix in rules:
            m = (theirs_re if to_ours else ours_re).match(key)
            if m:
                dst = theirs if not to_ours else ours
                for name, idx in m.groupdict().items():
                    dst = dst.replace("{" + name + "}", idx)
                out[dst + key[m.end():]] = fix(value, to_ours) if fix is not None else value
                break
        else:
            unmatched.append(key)
    if unmatched:
        side = f"mmdet ({layout})" if to_ours else "our detector"
        raise CheckpointError(f"{source}: {len(unmatched)} key(s) of the {side} layout have no counterpart: "
                              + ", ".join(sorted(unmatched)))
    return out


def mmdet_layout(sd: Mapping[str, Any]) -> str | None:
    """"cascade" / "standard" from sentinel keys, or None for a state dict that is neither."""
    if "backbone.downsample_layers.0.0.weight" not in sd or "rpn_head.rpn_conv.weight" not in sd:
        return None
    if "roi_head.bbox_head.0.fc_cls.weight" in sd:
        return "cascade"
    return "standard" if "roi_head.bbox_head.fc_cls.weight" in sd else None


def from_mmdet(sd: Mapping[str, torch.Tensor], layout: str | None = None, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """mmdet detector state dict -> ours (layout detected when None); a key outside the map is a CheckpointError."""
    layout = layout or mmdet_layout(sd)
    if layout is None:
        raise CheckpointError(f"{source}: not an mmdet Mask R-CNN / Cascade Mask R-CNN ConvNeXt checkpoint "
                              f"(no backbone.downsample_layers.0.0.weight, rpn_head.rpn_conv.weight, roi_head.bbox_head.*fc_cls)")
    return _convert(sd, layout, to_ours=True, source=source)


def to_mmdet(sd: Mapping[str, torch.Tensor], layout: str, source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Our detector state dict -> the mmdet layout ("cascade" or "standard" for a 1-stage Mask R-CNN)."""
    return _convert(sd, layout, to_ours=False, source=source)


def load_mmdet_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load a whole official mmdet checkpoint (backbone + neck + RPN + RoI heads) into a `ConvNeXtDetector`, strictly.

    Returns the checkpoint's `meta` (mmdet keeps e.g. `CLASSES` there; {} when absent).
    Raises CheckpointError naming every key without counterpart, missing, or of another shape.
    """
    from ..weights.io import unwrap_state_dict
    from .backbone import load_whole_strict, read_any

    source, raw = read_any(checkpoint)
    sd = from_mmdet(unwrap_state_dict(raw, source=source), source=source)  # mmdet wraps tensors in "state_dict"
    load_whole_strict(model, sd, source)
    meta = raw.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}
