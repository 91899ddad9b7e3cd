"""Isotropic ConvNeXt (paper §3.3, Table 2; PAPER.md §1.5): a ViT-style single-resolution stack.

Official layout: `stem` (16x16/16 conv, no LN after it), `blocks.j.*`, `norm`, `head`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .convnext import ClassifierMixin, _channel_norm
from .fast import to_channels_last
from .layers import Block, drop_path_rates, init_weights

__all__ = ["IsotropicConfig", "IsotropicConvNeXt"]


@dataclass(frozen=True)
class IsotropicConfig:
    depth: int = 18
    dim: int = 384
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0
    layer_scale_init_value: float = 0.0  # paper: off for S/B, 1e-6 for L
    head_init_scale: float = 1.0
    kernel_size: int = 7
    mlp_ratio: int = 4
    patch_size: int = 16
    num_intermediates: int = 4  # forward_intermediates taps the output after each quarter of the blocks

    arch = "isotropic"

    def __post_init__(self):
        if not 1 <= self.num_intermediates <= self.depth:
            raise ValueError(f"num_intermediates must be in [1, depth={self.depth}], got {self.num_intermediates}")


class IsotropicConvNeXt(ClassifierMixin, nn.Module):
    """Isotropic ConvNeXt.

    Args:
        config: architecture hyper-parameters, see `IsotropicConfig`.
    """

    def __init__(self, config: IsotropicConfig = IsotropicConfig()):
        super().__init__()
        self.config = config
        self.in_chans = config.in_chans
        self.num_classes = config.num_classes
        self.num_features = config.dim
        self.grad_checkpointing = False
        self.stride = config.patch_size

        self.stem = nn.Conv2d(config.in_chans, config.dim, config.patch_size, stride=config.patch_size)
        dp_rates = drop_path_rates(config.drop_path_rate, config.depth)
        self.blocks = nn.Sequential(
            *[
                Block(
                    config.dim,
                    drop_path=dp_rates[j],
                    layer_scale_init_value=config.layer_scale_init_value,
                    kernel_size=config.kernel_size,
                    mlp_ratio=config.mlp_ratio,
                )
                for j in range(config.depth)
            ]
        )
        self.norm = nn.LayerNorm(config.dim, eps=1e-6)
        self.apply(init_weights)
        self.head = self._make_head(config.dim, config.num_classes, config.head_init_scale)

        n = config.num_intermediates
        self._ends = [round(config.depth * (i + 1) / n) for i in range(n)]  # e.g. depth 18 -> 4, 9, 14, 18
        self.feature_info = [
            dict(num_chs=config.dim, reduction=config.patch_size, module=f"blocks.{e - 1}") for e in self._ends
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C, H//16, W//16)
        self._check_input(x)
        x = to_channels_last(x)  # NHWC memory: the blocks' permutes become free views
        return self._run_blocks(self.blocks, self.stem(x))

    def forward_intermediates(self, x: torch.Tensor, norm: bool = True) -> list[torch.Tensor]:
        """Outputs after each of `num_intermediates` equal groups of blocks, (B, C, H//16, W//16), channel-LayerNormed if `norm`."""
        self._check_input(x)
        x = self.stem(to_channels_last(x))
        outs, start = [], 0
        for end in self._ends:
            x = self._run_blocks(self.blocks[start:end], x)
            outs.append(_channel_norm(x, None) if norm else x)
            start = end
        return outs
