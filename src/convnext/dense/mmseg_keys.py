"""The official ConvNeXt UperNet checkpoints (mmseg, `semantic_segmentation/` of the paper's repo,
e.g. `upernet_convnext_tiny_1k_512x512.pth`) <-> our `UperNet` state dict, by a declared key map.

mmseg names (an `EncoderDecoder` with `UPerHead` + `FCNHead`; every ConvModule holds `conv` + `bn`):
    backbone.{downsample_layers,stages}.*   our backbone as is (the official ConvNeXt layout)
    backbone.norm{i}.*                      backbone.stage_norms.{i}.*   (LayerNorm of stage i's output)
    decode_head.psp_modules.{i}.1.*         decode_head.ppm.{i}.*        ({i}.0 is the parameter-free pool)
    decode_head.bottleneck.*                decode_head.ppm_bottleneck.*
    decode_head.lateral_convs.{i}.*         decode_head.lateral_convs.{i}.*
    decode_head.fpn_convs.{i}.*             decode_head.fpn_convs.{i}.*
    decode_head.fpn_bottleneck.*            decode_head.fpn_bottleneck.*
    decode_head.conv_seg.*                  decode_head.classifier.conv.*
    auxiliary_head.convs.0.*                aux_head.conv.*
    auxiliary_head.conv_seg.*               aux_head.classifier.conv.*

The map is read both ways (`from_mmseg`, `to_mmseg`); `load_mmseg_checkpoint` loads a whole file
strictly and names every key without a counterpart.
"""
from __future__ import annotations

import os
import re
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["MMSEG_KEY_MAP", "from_mmseg", "to_mmseg", "load_mmseg_checkpoint", "is_mmseg_checkpoint"]

# (ours, mmseg) key prefixes; `{i}` is an index. First match wins, so specific rules come first.
MMSEG_KEY_MAP: tuple[tuple[str, str], ...] = (
    ("backbone.stage_norms.{i}.", "backbone.norm{i}."),
    ("backbone.downsample_layers.", "backbone.downsample_layers."),
    ("backbone.stages.", "backbone.stages."),
    ("decode_head.ppm.{i}.", "decode_head.psp_modules.{i}.1."),
    ("decode_head.ppm_bottleneck.", "decode_head.bottleneck."),
    ("decode_head.lateral_convs.", "decode_head.lateral_convs."),
    ("decode_head.fpn_convs.", "decode_head.fpn_convs."),
    ("decode_head.fpn_bottleneck.", "decode_head.fpn_bottleneck."),
    ("decode_head.classifier.conv.", "decode_head.conv_seg."),
    ("aux_head.conv.", "auxiliary_head.convs.0."),
    ("aux_head.classifier.conv.", "auxiliary_head.conv_seg."),
)


def _compile(prefix: str) -> re.Pattern:
    return re.compile(re.escape(prefix).replace(r"\{i\}", r"(?P<i>\d+)"))


_RULES = [(_compile(ours), ours, _compile(theirs), theirs) for ours, theirs in MMSEG_KEY_MAP]


def _translate(key: str, to_ours: bool) -> str | None:
    for ours_re, ours, theirs_re, theirs in _RULES:
        src_re, dst = (theirs_re, ours) if to_ours else (ours_re, theirs)
        m = src_re.match(key)
        if m:
            return dst.replace("{i}", m.groupdict().get("i") or "") + key[m.end():]
    return None


def _convert(sd: Mapping[str, torch.Tensor], to_ours: bool, source: str) -> dict[str, torch.Tensor]:
    out, unmatched = {}, []
    for k, v in sd.items():
        new = _translate(k, to_ours)
        if new is None:
            unmatched.append(k)
        else:
            out[new] = v
    if unmatched:
        side = "mmseg" if to_ours else "our UperNet"
        raise CheckpointError(f"{source}: {len(unmatched)} key(s) of the {side} layout have no counterpart: "
                              + ", ".join(sorted(unmatched)))
    return out


def from_mmseg(sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """mmseg UperNet state dict -> ours; a key outside the map is a CheckpointError naming it."""
    return _convert(sd, to_ours=True, source=source)


def to_mmseg(sd: Mapping[str, torch.Tensor], source: str = "<state dict>") -> dict[str, torch.Tensor]:
    """Our UperNet state dict -> the mmseg layout (keys the official test scripts load)."""
    return _convert(sd, to_ours=False, source=source)


def is_mmseg_checkpoint(sd: Mapping[str, Any]) -> bool:
    """Sentinel keys of an mmseg UperNet checkpoint."""
    return "decode_head.conv_seg.weight" in sd and "backbone.downsample_layers.0.0.weight" in sd


def load_mmseg_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Load a whole official mmseg UperNet checkpoint into `model` (a `UperNet`), strictly.

    Returns the checkpoint's `meta` (mmseg stores e.g. `CLASSES` there; {} when absent).
    Raises CheckpointError naming every key without counterpart, missing, or of another shape.
    """
    from ..weights.io import unwrap_state_dict
    from .backbone import load_whole_strict, read_any

    source, raw = read_any(checkpoint)
    sd = unwrap_state_dict(raw, source=source)  # mmseg wraps the tensors in "state_dict"
    if not is_mmseg_checkpoint(sd):
        raise CheckpointError(f"{source}: not an mmseg UperNet checkpoint (no decode_head.conv_seg.weight / "
                              f"backbone.downsample_layers.0.0.weight)")
    sd = from_mmseg(sd, source)
    load_whole_strict(model, sd, source)
    meta = raw.get("meta")
    return dict(meta) if isinstance(meta, Mapping) else {}
