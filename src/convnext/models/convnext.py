"""Hierarchical ConvNeXt (paper §3, Fig. 4; PAPER.md §1.1-1.4) and the ConvNeXt-V2 variant.

Module names follow the official FAIR layout so official checkpoints load strictly:
`downsample_layers.{0: stem, 1-3: LN + 2x2 conv}`, `stages.i.j.*`, `norm`, `head`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .fast import to_channels_last
from .layers import Block, LayerNorm2d, drop_path_rates, init_weights

__all__ = ["ConvNeXtConfig", "ConvNeXt", "ClassifierMixin"]


@dataclass(frozen=True)
class ConvNeXtConfig:
    depths: tuple[int, ...] = (3, 3, 9, 3)  # blocks per stage (ConvNeXt-T)
    dims: tuple[int, ...] = (96, 192, 384, 768)  # channels per stage
    in_chans: int = 3
    num_classes: int = 1000  # 0 -> no head (pooled features)
    drop_path_rate: float = 0.0  # stochastic depth of the last block; rises linearly from 0
    layer_scale_init_value: float = 1e-6  # 0 disables layer scale
    head_init_scale: float = 1.0  # head weight/bias multiplied by this after init (0.001 to fine-tune)
    kernel_size: int = 7  # depthwise kernel
    mlp_ratio: int = 4  # inverted-bottleneck expansion
    stem_patch_size: int = 4  # 4x4/4 patchify stem; 1 or 2 adapts the network to 32px images
    use_grn: bool = False  # ConvNeXt V2: GRN in the MLP (use with layer_scale_init_value=0)
    stage_norms: bool = False  # learnable LN on each stage output (dense-prediction backbone)

    arch = "convnext"

    def __post_init__(self):
        if len(self.depths) != len(self.dims) or not self.depths:
            raise ValueError(f"depths {self.depths} and dims {self.dims} must be non-empty and of equal length")
        if self.stem_patch_size < 1 or self.kernel_size % 2 != 1:
            raise ValueError("stem_patch_size must be >= 1 and kernel_size odd")


class ClassifierMixin:
    """Head contract shared by the hierarchical and isotropic models (timm-style API)."""

    norm: nn.LayerNorm
    head: nn.Module

    def _make_head(self, num_features: int, num_classes: int, head_init_scale: float) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        head = nn.Linear(num_features, num_classes)
        init_weights(head)
        with torch.no_grad():
            head.weight.mul_(head_init_scale)
            head.bias.mul_(head_init_scale)
        return head

    def reset_classifier(self, num_classes: int, head_init_scale: float | None = None) -> None:
        """Replace the classifier with a freshly initialised `num_classes`-way head (0 removes it)."""
        scale = self.config.head_init_scale if head_init_scale is None else head_init_scale
        ref = next(self.parameters())
        self.head = self._make_head(self.num_features, num_classes, scale).to(ref.device, ref.dtype)
        self.num_classes = num_classes

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((-2, -1)))  # global average pool (B, C, H, W) -> (B, C), then LN
        return x if pre_logits else self.head(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        return blocks(x)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(
                f"{type(self).__name__} expects input of shape (B, {self.in_chans}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        # Any size works as in the official code, timm and torchvision: each strided conv floors
        # (225 -> 56 -> 28 -> 14 -> 7), so only an input smaller than the total stride (no pixel
        # left for the last stage) is refused.
        if h < self.stride or w < self.stride:
            raise ValueError(
                f"{type(self).__name__} needs H and W of at least {self.stride} pixels "
                f"(total stride of the network); got {h}x{w}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _channel_norm(x: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """LN over channels of an NCHW map; parameter-free (weight 1, bias 0) when `norm` is None."""
    if norm is not None:
        return norm(x)
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=1e-6).permute(0, 3, 1, 2)


class ConvNeXt(ClassifierMixin, nn.Module):
    """Hierarchical ConvNeXt.

    Args:
        config: architecture hyper-parameters, see `ConvNeXtConfig`.
    """

    def __init__(self, config: ConvNeXtConfig = ConvNeXtConfig()):
        super().__init__()
        self.config = config
        dims, depths = config.dims, config.depths
        self.in_chans = config.in_chans
        self.num_classes = config.num_classes
        self.num_features = dims[-1]
        self.grad_checkpointing = False

        p = config.stem_patch_size
        stem = nn.Sequential(nn.Conv2d(config.in_chans, dims[0], p, stride=p), LayerNorm2d(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(1, len(dims)):
            # LN *before* the strided conv: without it separate downsampling diverges (paper §2.6).
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            )

        dp_rates = drop_path_rates(config.drop_path_rate, sum(depths))
        self.stages = nn.ModuleList()
        start = 0
        for dim, depth in zip(dims, depths):
            self.stages.append(
                nn.Sequential(
                    *[
                        Block(
                            dim,
                            drop_path=dp_rates[start + j],
                            layer_scale_init_value=config.layer_scale_init_value,
                            kernel_size=config.kernel_size,
                            mlp_ratio=config.mlp_ratio,
                            use_grn=config.use_grn,
                        )
                        for j in range(depth)
                    ]
                )
            )
            start += depth

        self.stage_norms = nn.ModuleList([LayerNorm2d(d) for d in dims]) if config.stage_norms else None
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.apply(init_weights)
        self.head = self._make_head(self.num_features, config.num_classes, config.head_init_scale)

        self.stride = p * 2 ** (len(dims) - 1)
        self.feature_info = [
            dict(num_chs=d, reduction=p * 2**i, module=f"stages.{i}") for i, d in enumerate(dims)
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, C4, H//32, W//32)
        self._check_input(x)
        x = to_channels_last(x)  # whole network in NHWC memory: the blocks' permutes become free views
        for down, stage in zip(self.downsample_layers, self.stages):
            x = self._run_blocks(stage, down(x))
        return x

    def forward_intermediates(self, x: torch.Tensor, norm: bool = True) -> list[torch.Tensor]:
        """Outputs of every stage, (B, C_i, H//s_i, W//s_i), as a dense-prediction backbone sees them.

        With `norm=True` each output passes through its own channel LayerNorm, as in the paper's
        detection/segmentation backbones: the learnable `stage_norms` when the model was built
        with `stage_norms=True`, otherwise their freshly initialised equivalent (weight 1, bias 0).
        """
        self._check_input(x)
        x = to_channels_last(x)
        outs = []
        for i, (down, stage) in enumerate(zip(self.downsample_layers, self.stages)):
            x = self._run_blocks(stage, down(x))
            if norm:
                outs.append(_channel_norm(x, self.stage_norms[i] if self.stage_norms is not None else None))
            else:
                outs.append(x)
        return outs
