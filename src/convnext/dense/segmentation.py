"""UperNet semantic segmentation on a ConvNeXt backbone (paper §4 ADE20K, PAPER.md §4.2).

`upernet_convnext_<size>` is registered for every hierarchical ConvNeXt (atto..xlarge):

    model = convnext.create_model("upernet_convnext_tiny", num_classes=150)

The backbone is `DenseConvNeXt`, the one the detectors use (our `ConvNeXt` with a LayerNorm on
each stage output, no classifier); the heads live in `convnext.dense.upernet`. Settings follow
the official `semantic_segmentation/configs/convnext/*.py`: layer scale initialised to 1.0,
stochastic depth T 0.4, S 0.3, B/L/XL 0.4, UperHead 512 channels, auxiliary FCN head on stage 3
(256 channels, loss weight 0.4).

Model contract:
    model(images)                 -> logits (B, num_classes, H, W) at input resolution; any H, W
                                     >= 32, fed as is (no padding: each strided conv floors, the
                                     heads resize bilinearly, as mmseg's EncoderDecoder and HF do)
    model(images, labels)         -> {"loss_seg", "loss_aux"} in train mode (labels (B, H, W)
                                     int64, 255 = ignore); logits in eval mode
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..models.convnext import ConvNeXtConfig
from ..models.registry import ModelSpec, get_spec, register_arch, register_model
from .backbone import BackboneLoadReport, DenseConvNeXt, load_backbone_checkpoint
from .upernet import FCNHead, UperNetHead, resize

__all__ = ["UperNetConfig", "UperNet", "BackboneLoadReport", "load_backbone"]


@dataclass(frozen=True)
class UperNetConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)  # backbone blocks per stage (ConvNeXt-T)
    dims: tuple[int, ...] = (96, 192, 384, 768)  # backbone channels per stage
    num_classes: int = 150  # ADE20K
    drop_path_rate: float = 0.4  # backbone stochastic depth (official ADE20K config of T)
    layer_scale_init_value: float = 1.0  # as the official dense configs (overwritten by pre-trained gamma)
    channels: int = 512  # UperHead width
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)  # PPM output sizes
    dropout: float = 0.1  # Dropout2d before both classifiers
    aux_channels: int = 256  # auxiliary FCN head width; 0 removes the head
    aux_stage: int = 2  # stage (0-based) the auxiliary head reads: stage 3 of the paper
    aux_weight: float = 0.4  # auxiliary loss weight
    ignore_index: int = 255  # label value excluded from the loss

    arch = "upernet"

    def backbone_config(self) -> ConvNeXtConfig:
        return ConvNeXtConfig(depths=self.depths, dims=self.dims, num_classes=0, drop_path_rate=self.drop_path_rate,
                              layer_scale_init_value=self.layer_scale_init_value, stage_norms=True)


class UperNet(nn.Module):
    """ConvNeXt backbone + UperNet head (+ auxiliary FCN head).

    Args:
        config: see `UperNetConfig`.
    """

    def __init__(self, config: UperNetConfig = UperNetConfig()):
        super().__init__()
        self.config = config
        self.num_classes = config.num_classes
        self.in_chans = 3
        self.backbone = DenseConvNeXt(config.backbone_config())  # as the detectors' (no final LayerNorm)
        self.stride = self.backbone.stride  # 32: the smallest input side
        self.decode_head = UperNetHead(config.dims, config.num_classes, config.channels, config.pool_scales,
                                       config.dropout)
        self.aux_head = (FCNHead(config.dims[config.aux_stage], config.num_classes, config.aux_channels,
                                 config.dropout) if config.aux_channels else None)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None):
        feats = list(self.backbone(images).values())  # 4 x (B, C_i, H_i, W_i), H_0 = H // 4, H_i+1 = H_i // 2
        logits = self.decode_head(feats)  # (B, K, H // 4, W // 4)
        if self.training and labels is not None:
            losses = {"loss_seg": self._loss(logits, labels)}
            if self.aux_head is not None:
                losses["loss_aux"] = self.config.aux_weight * self._loss(self.aux_head(feats[self.config.aux_stage]),
                                                                         labels)
            return losses
        return resize(logits, images.shape[-2:])  # (B, K, H, W), mmseg's final resize to the input

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel cross-entropy at label resolution, averaged over non-ignored pixels (0 if none)."""
        logits = resize(logits, labels.shape[-2:])  # (B, K, H, W)
        total = F.cross_entropy(logits.float(), labels, ignore_index=self.config.ignore_index, reduction="sum")
        return total / (labels != self.config.ignore_index).sum().clamp(min=1)


def load_backbone(model: UperNet, checkpoint: str | os.PathLike | Mapping[str, torch.Tensor], *,
                  ema: bool = False) -> BackboneLoadReport:
    """Start `model.backbone` from any ConvNeXt checkpoint `convnext.weights` reads (official,
    timm, torchvision, HF, or an official detection / segmentation file's `backbone.*`): the shared
    loader of the dense models (`backbone.load_backbone_checkpoint`). The classifier is dropped, the
    per-stage output norms a classification checkpoint lacks keep their initialisation, and both are
    named in the report; the heads are untouched."""
    return load_backbone_checkpoint(model.backbone, checkpoint, ema=ema)


# --------------------------------------------------------------------------------------------
# Registry. References: the official semantic_segmentation README / paper Table 4 (PAPER.md §4.2):
# params of the whole model (aux head included) and MACs of the inference model (no aux head) at
# (2048, 512) for IN-1K backbones; L and XL exist only as IN-22K models at 640 crops, whose FLOPs
# the paper gives at (2560, 640).
# --------------------------------------------------------------------------------------------
register_arch("upernet", UperNetConfig, UperNet)

_DROP_PATH = {"tiny": 0.4, "small": 0.3, "base": 0.4, "large": 0.4, "xlarge": 0.4}  # official configs
_REFERENCE = {  # size: (params M, GMACs, (H, W) of the GMACs)
    "tiny": (60.0, 939.0, (512, 2048)),
    "small": (82.0, 1027.0, (512, 2048)),
    "base": (122.0, 1170.0, (512, 2048)),
    "large": (235.0, 2458.0, (640, 2560)),
    "xlarge": (391.0, 3335.0, (640, 2560)),
}

for _size in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge"):
    _bb = get_spec(f"convnext_{_size}").config
    _params, _gmacs, _at = _REFERENCE.get(_size, (None, None, (512, 2048)))
    register_model(
        ModelSpec(
            f"upernet_convnext_{_size}",
            UperNetConfig(depths=_bb.depths, dims=_bb.dims, drop_path_rate=_DROP_PATH.get(_size, 0.1)),
            params_m=_params, task="segmentation", flops_size=_at, ref_gmacs=_gmacs,
            source="paper" if _params else "ours",
            description=f"UperNet, ConvNeXt-{_size} backbone (ADE20K)",
        )
    )
