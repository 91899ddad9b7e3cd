"""Our ConvNeXt as a dense-prediction backbone (PAPER.md §4.1-4.2), shared by detection and segmentation.

The official detection / segmentation backbones are the classification ConvNeXt with the final
LayerNorm and head dropped and a channels-first LayerNorm added on each of the 4 stage outputs.
`DenseConvNeXt` is exactly that, as a subclass of our `ConvNeXt` (no copied code): its parameter
names are the official ones (`downsample_layers.*`, `stages.*`, `stage_norms.{i}` = official
`norm{i}`), so layer-wise lr decay and checkpoint maps read the same names as the official code.

`load_backbone_checkpoint` starts it from any classification checkpoint the weights library reads
(official, timm, torchvision, HF, V2; or a backbone-only dense checkpoint).
"""
from __future__ import annotations

import dataclasses
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.convnext import ConvNeXt, ConvNeXtConfig
from ..models.registry import get_spec

__all__ = ["DenseConvNeXt", "dense_backbone", "load_backbone_checkpoint", "BackboneLoadReport", "load_whole_strict",
           "read_any"]


class DenseConvNeXt(ConvNeXt):
    """ConvNeXt returning its 4 normalised stage maps, as an OrderedDict {"0": C2, ..., "3": C5}.

    Built with `stage_norms=True` and no classifier; the classification LayerNorm (`norm`) is
    dropped as in the official dense configs. Strides 4, 8, 16, 32 (with the 4x4 stem).

    Args:
        config: a hierarchical ConvNeXt config; `num_classes` and `stage_norms` are overridden.
    """

    def __init__(self, config: ConvNeXtConfig):
        super().__init__(dataclasses.replace(config, num_classes=0, stage_norms=True))
        self.norm = nn.Identity()  # the classification head's LN: unused by dense heads, absent from their checkpoints
        self.out_channels = list(config.dims)  # channels of the returned maps, for the neck

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:  # (B, 3, H, W), H and W multiples of 32
        return OrderedDict((str(i), f) for i, f in enumerate(self.forward_intermediates(x)))  # (B, C_i, H/4/2^i, W/4/2^i)


def dense_backbone(name: str, *, drop_path_rate: float = 0.0, layer_scale_init_value: float | None = None) -> DenseConvNeXt:
    """A `DenseConvNeXt` of the registered hierarchical ConvNeXt `name` (e.g. "convnext_tiny").

    Args:
        name: a registered model whose config is a `ConvNeXtConfig` (convnext_*, convnextv2_*).
        drop_path_rate: stochastic depth of the last block.
        layer_scale_init_value: layer-scale init (the official dense configs use 1.0; it is
            overwritten by a checkpoint); None keeps the classification config's value.
    """
    try:
        config = get_spec(name).config
    except KeyError as e:
        raise ConfigError(f"backbone {name!r}: {e.args[0]}") from None
    if not isinstance(config, ConvNeXtConfig):
        raise ConfigError(f"backbone {name!r} is not a hierarchical ConvNeXt (dense models need 4 stages of strides 4-32)")
    changes: dict = dict(drop_path_rate=drop_path_rate)
    if layer_scale_init_value is not None:
        changes["layer_scale_init_value"] = layer_scale_init_value
    return DenseConvNeXt(dataclasses.replace(config, **changes))


@dataclass
class BackboneLoadReport:
    """What `load_backbone_checkpoint` did."""

    source: str
    layout: str  # layout the checkpoint was stored in
    num_tensors: int  # tensors copied into the backbone
    new: list[str] = field(default_factory=list)  # backbone tensors the checkpoint lacks (kept as initialised)
    dropped: list[str] = field(default_factory=list)  # checkpoint tensors with no place in a backbone (head, final norm)

    def __str__(self) -> str:
        s = f"backbone: loaded {self.num_tensors} tensors from {self.source} ({self.layout} layout)"
        if self.new:
            s += f"; newly initialised: {', '.join(self.new)}"
        if self.dropped:
            s += f"; dropped from the checkpoint: {', '.join(self.dropped)}"
        return s


def load_backbone_checkpoint(
    backbone: DenseConvNeXt, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], *, ema: bool = False
) -> BackboneLoadReport:
    """Load a classification (or backbone-only dense) checkpoint into a `DenseConvNeXt`.

    The checkpoint is read and checked by `convnext.weights.load_checkpoint` into a plain ConvNeXt
    of the same architecture (any supported layout; strict for the body, classifier dropped); its
    weights are then copied into `backbone`. The stage LayerNorms, which classification
    checkpoints do not have, stay as initialised (weight 1, bias 0) and are reported by name.

    Raises:
        CheckpointError: the checkpoint is unreadable or is another architecture.
    """
    from ..weights.io import unwrap_state_dict
    from ..weights.loading import load_checkpoint, to_official

    source, raw = read_any(path_or_state_dict)
    layout, sd = to_official(unwrap_state_dict(raw, ema=ema, source=source), source)
    has_norms = "stage_norms.0.weight" in sd
    plain = ConvNeXt(dataclasses.replace(backbone.config, num_classes=0, stage_norms=has_norms, drop_path_rate=0.0))
    report = load_checkpoint(plain, sd, reinit_head=True, source=source)  # strict body; head (if any) dropped
    state = {k: v for k, v in plain.state_dict().items() if not k.startswith(("norm.", "head."))}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if unexpected:  # cannot happen for the same config; guards against a future layout change
        raise CheckpointError(f"{source}: tensors with no place in the backbone: {', '.join(unexpected)}")
    dropped = [k for k in sd if k.startswith(("norm.", "head."))]
    return BackboneLoadReport(source, layout, len(state), sorted(missing), dropped or report.dropped)


def load_whole_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a translated whole-model state dict (official mmdet/mmseg file) strictly, or raise a
    CheckpointError naming every key that is missing, has no counterpart, or has another shape."""
    own = model.state_dict()
    problems = []
    missing = sorted(set(own) - set(sd))
    if missing:
        problems.append(f"missing from the checkpoint ({len(missing)}): {', '.join(missing)}")
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        problems.append(f"not in the model ({len(unexpected)}): {', '.join(unexpected)}")
    shape = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
             for k in sorted(set(sd) & set(own)) if sd[k].shape != own[k].shape]
    if shape:
        problems.append(f"shape mismatch ({len(shape)}): " + "; ".join(shape))
    if problems:
        raise CheckpointError(f"{source} does not fit this {type(model).__name__}: " + " | ".join(problems))
    with torch.no_grad():
        model.load_state_dict(sd, strict=True)


def read_any(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[str, dict]:
    """(source name, raw top-level object) of a checkpoint path or an in-memory mapping (safe reader)."""
    from ..weights.io import read_checkpoint

    if isinstance(checkpoint, Mapping):
        return "<state dict>", dict(checkpoint)
    return str(checkpoint), read_checkpoint(checkpoint)
