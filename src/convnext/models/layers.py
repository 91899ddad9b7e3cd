"""Building blocks shared by every ConvNeXt-style network (paper §1.2-1.3 of PAPER.md).

One `Block` serves the hierarchical ConvNeXt, the isotropic ConvNeXt and the V2 family
(which swaps layer scale for Global Response Normalization).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .fast import (
    add_residual_,
    bf16_linears_apply,
    depthwise_conv,
    fused_dw_norm_applies,
    fp32_mlp_applies,
    fuses_residual,
    layer_scaled_linear,
    linear_gelu,
)
from .triton_block import dwconv_layernorm, linear_bias_gelu, linear_bias_scale_residual, use_triton

__all__ = ["LayerNorm2d", "GRN", "Block", "init_weights", "drop_path_rates"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of an NCHW tensor ("channels-first" LN in the paper's code).

    Implemented as permute -> `F.layer_norm` -> permute rather than the official hand-written
    mean/var: `F.layer_norm` accumulates in fp32 (and autocast runs it in fp32), so the
    variance cannot overflow in fp16, and under `channels_last` memory format the permutes are
    free views. Under torch.compile the reduction is written over dim 1 instead (see
    `_channels_first`). Parameter names (`weight`, `bias`) match the official checkpoints.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        if torch.compiler.is_compiling():
            return self._channels_first(x)
        x = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        """The same LN written on the logical (B, C, H, W) shape, for torch.compile.

        Inductor gives every buffer channels-last strides for its *logical* shape; the (B, H, W, C)
        input of `F.layer_norm` above would be materialised with H innermost and transposed on the
        way in and out. Here the reduction runs over dim 1 of the NCHW tensor, whose channels-last
        layout is the real NHWC memory order, and inductor fuses it into one pass. fp32 statistics
        as `F.layer_norm`; the result dtype is what `F.layer_norm` gives (fp32 under autocast).
        """
        xf = x.float()
        mean = xf.mean(1, keepdim=True)  # (B, 1, H, W)
        var = (xf - mean).square().mean(1, keepdim=True)
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight[:, None, None] + self.bias[:, None, None]  # (C, 1, 1) broadcast
        return y.to(torch.promote_types(x.dtype, self.weight.dtype))


class GRN(nn.Module):
    """Global Response Normalization of ConvNeXt V2, on channels-last input (B, H, W, C).

    Parameters are stored as (1, 1, 1, C) as in the official V2 checkpoints.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        # Spatial L2 norm per channel computed in fp32 for half-precision safety.
        gx = torch.linalg.vector_norm(x.float(), ord=2, dim=(1, 2), keepdim=True)  # (B, 1, 1, C)
        nx = gx / (gx.mean(dim=-1, keepdim=True) + self.eps)
        return self.gamma * (x * nx.to(x.dtype)) + self.beta + x


class Block(nn.Module):
    """ConvNeXt block: dw 7x7 -> LN -> Linear 4C -> GELU -> [GRN] -> Linear C -> gamma -> DropPath -> +x.

    Args:
        dim: number of channels C.
        drop_path: stochastic-depth probability of this block's residual branch.
        layer_scale_init_value: initial value of the per-channel scale gamma; 0 disables it.
        kernel_size: depthwise kernel size (7 in the paper).
        mlp_ratio: hidden width of the inverted bottleneck as a multiple of C (4 in the paper).
        use_grn: insert ConvNeXt-V2 Global Response Normalization after the GELU.
    """

    # dwconv + LayerNorm as one `convnext::dwconv_ln` call at CPU inference (`fused_dw_norm_applies`); off by
    # default (the kernel is compiled at first use), switched on by `convnext.deploy.fast_cpu_model`, which also
    # registers the kernel's packed fp32 parameters (`_dw_norm_w`, `_b`, `_g`, `_beta`; not saved)
    fused_dw_norm = False
    # pwconv1 + GELU and pwconv2 + bias + residual as our bf16 AMX GEMMs at bf16 CPU inference (`bf16_linears_apply`);
    # off by default, switched on by `fast_cpu_model`, which packs the weights (`_pw1_w`, `_pw1_b`, `_pw2_w`,
    # `_pw2_b`, not saved; layer scale folded in) and sets the K steps `_pw1_ks`, `_pw2_ks` (0: pwconv2 not taken)
    fused_linears = False
    # ... and both as one `convnext::mlp_bf16` call (no GRN in between); set by `fast_cpu_model`
    fused_mlp = False
    # fp32 CPU inference: both pointwise convs, GELU and the residual as one `convnext::mlp_fp32` call (no GRN in
    # between), on weights `fast_cpu_model` packs into the same buffers (fp32 layout)
    fused_mlp_fp32 = False

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        kernel_size: int = 7,
        mlp_ratio: int = 4,
        use_grn: bool = False,
    ):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        # The official code runs LN and both 1x1 convs as Linear on NHWC: same maths, faster.
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.grn = GRN(mlp_ratio * dim) if use_grn else nn.Identity()
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        if drop_path > 0:
            from torchvision.ops import StochasticDepth  # here: importing torchvision costs ~2 s at start-up

            self.drop_path = StochasticDepth(drop_path, "row")
        else:
            self.drop_path = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W), fastest in channels_last format
        # x + drop_path(gamma * pwconv2(grn(gelu(pwconv1(norm(dwconv(x))))))), computed with the fused
        # helpers of `fast.py` (gamma folded into pwconv2, in-place / oneDNN-fused ops).
        if use_triton(x, self.dwconv, self.norm):  # CUDA, eager: three Triton kernels
            return self._forward_triton(x)
        shortcut = x
        if self.fused_dw_norm and fused_dw_norm_applies(x, self.dwconv, self.norm):
            # CPU inference prepared by `fast_cpu_model`: both in one pass of our kernel, (B, H, W, C) out
            x = torch.ops.convnext.dwconv_ln(x, self._dw_norm_w, self._dw_norm_b, self._dw_norm_g,
                                             self._dw_norm_beta, self.norm.eps)
        else:
            x = depthwise_conv(x, self.dwconv)  # fast weight gradient when training on CPU
            x = self.norm(x.permute(0, 2, 3, 1))  # (B, H, W, C): the permute is a free view in channels_last
        if self.fused_mlp_fp32 and not self._drops() and fp32_mlp_applies(x, self.pwconv1):
            # fp32 CPU inference prepared by `fast_cpu_model`: one pass of ours, the 4C hidden kept in cache
            x = torch.ops.convnext.mlp_fp32(x, self._pw1_w, self._pw1_b, self._pw2_w, self._pw2_b,
                                            shortcut.permute(0, 2, 3, 1))
            return x.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last strides
        if self.fused_linears and bf16_linears_apply(x, self.pwconv1):
            # bf16 CPU inference prepared by `fast_cpu_model`: both pointwise convs in AMX GEMMs of ours
            if self.fused_mlp and not self._drops():  # both in one pass, the 4C hidden kept in cache
                x = torch.ops.convnext.mlp_bf16(x, self._pw1_w, self._pw1_b, self._pw2_w, self._pw2_b,
                                                shortcut.permute(0, 2, 3, 1), self._pw1_ks)
                return x.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last strides
            x = self.grn(torch.ops.convnext.linear_gelu_bf16(x, self._pw1_w, self._pw1_b, self._pw1_ks))
            if self._pw2_ks and not self._drops():
                x = torch.ops.convnext.linear_residual_bf16(x, self._pw2_w, self._pw2_b, shortcut.permute(0, 2, 3, 1),
                                                            self._pw2_ks)
                return x.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last strides
            return self._scaled_branch_plus(x, shortcut)
        x = self.grn(linear_gelu(x, self.pwconv1))  # exact (erf) GELU fused with pwconv1
        if fuses_residual(x, self.pwconv2) and not self._drops():
            # Eager CPU fp32: the residual add is a post-op of the pwconv2 GEMM, on the (B, H, W, C) view.
            x = layer_scaled_linear(x, self.pwconv2, self.gamma, residual=shortcut.permute(0, 2, 3, 1))
            return x.permute(0, 3, 1, 2)  # (B, C, H, W)
        return self._scaled_branch_plus(x, shortcut)

    def _forward_triton(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, C, H, W)
        """dwconv + LN, pwconv1 + bias + GELU, pwconv2 + bias + gamma + residual: `triton_block.py`."""
        shortcut = x
        x = dwconv_layernorm(x, self.dwconv, self.norm)  # (B, H, W, C)
        x = self.grn(linear_bias_gelu(x, self.pwconv1.weight, self.pwconv1.bias))  # (B, H, W, 4C)
        if self._drops():
            # Stochastic depth scales the branch alone, before the add: the epilogue cannot hold it,
            # so training with drop path takes the plain pwconv2 and a separate add (exact semantics).
            return self._scaled_branch_plus(x, shortcut)
        x = linear_bias_scale_residual(x, self.pwconv2.weight, self.pwconv2.bias, self.gamma,
                                       shortcut.permute(0, 2, 3, 1))  # (B, H, W, C)
        return x.permute(0, 3, 1, 2)  # (B, C, H, W), channels_last strides

    def _drops(self) -> bool:
        return self.training and not isinstance(self.drop_path, nn.Identity)

    def _scaled_branch_plus(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """shortcut + drop_path(gamma * pwconv2(x)), x (B, H, W, 4C) -> (B, C, H, W)."""
        # The add runs on the logical (B, C, H, W) shape. In eager mode that is the
        # same memory pass as adding on the (B, H, W, C) view; under torch.compile it matters:
        # inductor's layout optimisation gives a buffer channels-last strides *for its logical shape*,
        # so a residual stream materialised as (B, H, W, C) would be stored with H innermost and
        # transposed on every write and read (tests/models/test_compile_layout.py counts them).
        x = self.drop_path(layer_scaled_linear(x, self.pwconv2, self.gamma)).permute(0, 3, 1, 2)  # (B, C, H, W)
        return add_residual_(x, shortcut)


def init_weights(module: nn.Module) -> None:
    """Paper/official init: every Conv2d and Linear weight ~ N(0, .02) truncated at +-2, bias 0."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def drop_path_rates(rate: float, num_blocks: int) -> list[float]:
    """Stochastic depth per block, rising linearly from 0 (first) to `rate` (last), like torch.linspace."""
    if num_blocks == 1:
        return [0.0]
    return [rate * i / (num_blocks - 1) for i in range(num_blocks)]
