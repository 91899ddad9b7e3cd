"""UperNet heads (Xiao et al. 2018, "Unified Perceptual Parsing") as used by ConvNeXt on ADE20K
(paper §4, PAPER.md §4.2): a pyramid pooling module (PPM) on the last stage, an FPN that fuses all
four stages, and an auxiliary FCN head on stage 3 for deep supervision.

Plain PyTorch, no mmcv. The computation follows mmseg's `UPerHead` / `FCNHead` (bilinear resizes
with align_corners=False, conv -> BN -> ReLU units whose convs have no bias, dropout before the
1x1 classifier); `convnext.dense.mmseg_keys` maps the official checkpoints' key names onto ours.
BatchNorm is plain `nn.BatchNorm2d`: `nn.SyncBatchNorm.convert_sync_batchnorm(model)` turns it
into the SyncBN of the official configs for multi-GPU training.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBNReLU", "UperNetHead", "FCNHead", "resize"]


def resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a (B, C, H, W) map to `size` (H', W'), align_corners=False as mmseg."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class ConvBNReLU(nn.Sequential):
    """k x k conv (no bias: BN follows) -> BatchNorm -> ReLU; mmcv's `ConvModule` with BN."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.ReLU(inplace=True)


class _Classifier(nn.Sequential):
    """Dropout2d -> 1x1 conv to the class logits (mmseg `cls_seg`)."""

    def __init__(self, in_chs: int, num_classes: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.conv = nn.Conv2d(in_chs, num_classes, 1)


def _init_head(module: nn.Module) -> None:
    # mmseg's init: ConvModule convs kaiming-normal (fan_out, ReLU gain), the classifier
    # normal(0, 0.01), BN weight 1 / bias 0 (torch's default).
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    for m in module.modules():
        if isinstance(m, _Classifier):
            nn.init.normal_(m.conv.weight, std=0.01)
            nn.init.zeros_(m.conv.bias)


class UperNetHead(nn.Module):
    """PPM + FPN fusion over the 4 backbone stages -> logits at stride 4.

    Args:
        in_channels: channels of the stage maps, e.g. (96, 192, 384, 768) for ConvNeXt-T.
        num_classes: output classes.
        channels: width of every fused map (512 in the paper's configs).
        pool_scales: PPM output sizes on the last stage.
        dropout: Dropout2d before the classifier.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
    ):
        super().__init__()
        self.pool_scales = tuple(pool_scales)
        # PPM: one 1x1 ConvBNReLU per pool scale; pooling itself has no parameters.
        self.ppm = nn.ModuleList(ConvBNReLU(in_channels[-1], channels) for _ in self.pool_scales)
        self.ppm_bottleneck = ConvBNReLU(in_channels[-1] + len(self.pool_scales) * channels, channels, 3)
        # FPN: lateral 1x1 and output 3x3 for stages 1-3 (stage 4's lateral is the PPM output).
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, channels) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvBNReLU(len(in_channels) * channels, channels, 3)
        self.classifier = _Classifier(channels, num_classes, dropout)
        _init_head(self)

    def _ppm(self, x: torch.Tensor) -> torch.Tensor:  # (B, C4, h, w) -> (B, channels, h, w)
        size = x.shape[-2:]
        pooled = [resize(conv(F.adaptive_avg_pool2d(x, s)), size) for s, conv in zip(self.pool_scales, self.ppm)]
        return self.ppm_bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        # feats: stage maps (B, C_i, H/4/2^i, W/4/2^i), i = 0..3
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats)] + [self._ppm(feats[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down: add the coarser map, upsampled
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn_convs, laterals)] + [laterals[-1]]
        size = outs[0].shape[-2:]  # stride 4
        fused = self.fpn_bottleneck(torch.cat([resize(o, size) for o in outs], dim=1))  # (B, channels, H/4, W/4)
        return self.classifier(fused)  # (B, num_classes, H/4, W/4)


class FCNHead(nn.Module):
    """Auxiliary head: one 3x3 ConvBNReLU + classifier on one stage map (mmseg `FCNHead`,
    num_convs=1, concat_input=False)."""

    def __init__(self, in_chs: int, num_classes: int, channels: int = 256, dropout: float = 0.1):
        super().__init__()
        self.conv = ConvBNReLU(in_chs, channels, 3)
        self.classifier = _Classifier(channels, num_classes, dropout)
        _init_head(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, num_classes, h, w)
        return self.classifier(self.conv(x))
