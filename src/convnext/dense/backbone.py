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
from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from ..models.convnext import ConvNeXt, ConvNeXtConfig
from ..models.registry import get_spec
from ..weights.loading import BackboneLoadReport, load_backbone

__all__ = ["DenseConvNeXt", "dense_backbone", "load_backbone_checkpoint", "BackboneLoadReport", "load_whole_dense",
           "load_whole_strict", "read_any"]


class DenseConvNeXt(ConvNeXt):
    """ConvNeXt returning its 4 normalised stage maps, as an OrderedDict {"0": C2, ..., "3": C5}:
    the backbone of every dense model (detectors and UperNet).

    Built with `stage_norms=True` and no classifier; the classification LayerNorm (`norm`) is
    dropped as in the official dense configs. Strides 4, 8, 16, 32 (with the 4x4 stem).

    Args:
        config: a hierarchical ConvNeXt config; `num_classes` and `stage_norms` are overridden.
    """

    def __init__(self, config: ConvNeXtConfig):
        super().__init__(dataclasses.replace(config, num_classes=0, stage_norms=True))
        self.norm = nn.Identity()  # the classification head's LN: unused by dense heads, absent from their checkpoints
        self.out_channels = list(config.dims)  # channels of the returned maps, for the neck

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:  # (B, 3, H, W), H and W >= 32
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


def load_backbone_checkpoint(
    backbone: DenseConvNeXt, path_or_state_dict: str | os.PathLike | Mapping[str, torch.Tensor], *, ema: bool = False
) -> BackboneLoadReport:
    """Load a classification (or backbone-only dense) checkpoint into a `DenseConvNeXt`.

    The checkpoint is read and checked by `convnext.weights.load_checkpoint` into a plain ConvNeXt
    of the same architecture (any supported layout; strict for the body, classifier dropped); its
    weights are then copied into `backbone`. The stage LayerNorms, which classification
    checkpoints do not have, stay as initialised (weight 1, bias 0) and are reported by name.
    (`convnext.weights.loading.load_backbone`.)

    Raises:
        CheckpointError: the checkpoint is unreadable or is another architecture.
    """
    return load_backbone(backbone, path_or_state_dict, ema=ema)


def load_whole_dense(model: nn.Module, path: str | os.PathLike, task: str) -> str | None:
    """`train --finetune FILE`: a whole mmdet / mmseg (either naming) or our own dense checkpoint of
    `task` ("detection" | "segmentation") into `model`, strictly; the line saying what was read
    (e.g. "read mmseg checkpoint (OpenMMLab naming): ..."), or None when the file is not one (the
    caller then loads its backbone)."""
    from ..weights.dense_files import _read_dense, strict_load

    dense = _read_dense(path, None, need_name=False)
    if dense is None or dense.task != task:
        return None
    strict_load(model, dense.state_dict, dense.source)
    return dense.loaded()


def load_whole_strict(model: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a translated whole-model state dict (mmdet/mmseg file) strictly, or raise a
    CheckpointError naming every key that is missing, has no counterpart, or has another shape."""
    from ..weights.dense_files import strict_load

    strict_load(model, sd, source)


def read_any(checkpoint: str | os.PathLike | Mapping[str, Any]) -> tuple[str, dict]:
    """(source name, raw top-level object) of a checkpoint path or an in-memory mapping (safe reader)."""
    from ..weights.io import read_checkpoint

    if isinstance(checkpoint, Mapping):
        return "<state dict>", dict(checkpoint)
    return str(checkpoint), read_checkpoint(checkpoint)
