"""Triton kernels for the ConvNeXt block on CUDA (paper §1.2 of PAPER.md): first piece.

`dwconv_layernorm` fuses the block's depthwise 7x7 conv and its LayerNorm into one pass over an
NHWC tensor: one program per (image, row, tile of `BLOCK_W` columns) holds all C channels, reads
the 7x7 neighbourhood, adds the conv bias, normalises over C in fp32 and writes the (B, H, W, C)
input of pwconv1, so the conv output never goes to memory. Same parameters (the block's `dwconv`
and `norm`), so the state-dict layout is unchanged. The backward pass recomputes the textbook ops
(conv2d + layer_norm in fp32) under autograd: correct gradients, no fused backward yet.

Switch: `CONVNEXT_TRITON=0` turns the kernel off; unset, it is used on CUDA when Triton imports;
`CONVNEXT_TRITON=1` also allows CPU tensors when Triton's interpreter is on (`TRITON_INTERPRET=1`),
which is how the tests check it without a GPU. It is never used inside torch.compile (inductor
generates its own fused kernels there). Not yet measured on a GPU.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["triton_available", "use_triton", "dwconv_layernorm"]


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # noqa: BLE001 - missing, or broken for this driver / Python
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def use_triton(x: torch.Tensor, conv: nn.Conv2d, norm: nn.LayerNorm) -> bool:
    """Whether `dwconv_layernorm` applies to this block input (see the module docstring)."""
    switch = os.environ.get("CONVNEXT_TRITON")
    if switch == "0" or torch.compiler.is_compiling() or torch.jit.is_scripting() or not triton_available():
        return False
    on_device = x.is_cuda or (switch == "1" and x.device.type == "cpu" and _interpreting())
    k = conv.kernel_size[0]
    return (
        on_device
        and x.ndim == 4
        and conv.groups == conv.in_channels == conv.out_channels == x.shape[1]
        and conv.kernel_size == (k, k) and k % 2 == 1
        and conv.stride == (1, 1) and conv.dilation == (1, 1) and conv.padding == (k // 2, k // 2)
        and conv.padding_mode == "zeros"
        and norm.weight is not None and norm.normalized_shape == (x.shape[1],)
    )


tl = None  # triton.language, imported on first use (`convnext --help` must not import Triton)


def _dw_ln_fwd(x_ptr, w_ptr, cb_ptr, lw_ptr, lb_ptr, y_ptr, H, W, C, eps,
               K: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_C: tl.constexpr):
    # x, y: (B, H, W, C) contiguous; w: (K*K, C) taps-major; cb, lw, lb: (C,)
    pid_bh = tl.program_id(0)
    b = pid_bh // H
    h = pid_bh % H
    ws = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)  # (BLOCK_W,) output columns
    cs = tl.arange(0, BLOCK_C)
    cmask = cs < C
    acc = tl.zeros((BLOCK_W, BLOCK_C), dtype=tl.float32)
    for kh in tl.static_range(K):
        hh = h + kh - K // 2
        row_ok = (hh >= 0) & (hh < H)
        for kw in tl.static_range(K):
            wi = ws + kw - K // 2
            m = row_ok & (wi >= 0) & (wi < W)
            pix = ((b * H + hh) * W + wi).to(tl.int64) * C  # (BLOCK_W,) element offsets
            v = tl.load(x_ptr + pix[:, None] + cs[None, :], mask=m[:, None] & cmask[None, :], other=0.0)
            wt = tl.load(w_ptr + (kh * K + kw) * C + cs, mask=cmask, other=0.0)
            acc += v.to(tl.float32) * wt.to(tl.float32)[None, :]
    acc += tl.load(cb_ptr + cs, mask=cmask, other=0.0).to(tl.float32)[None, :]
    # LayerNorm over the C channels of each pixel, fp32 statistics (padding channels excluded).
    mean = tl.sum(acc, axis=1) / C  # padded channels hold 0
    diff = tl.where(cmask[None, :], acc - mean[:, None], 0.0)
    var = tl.sum(diff * diff, axis=1) / C
    rstd = 1.0 / tl.sqrt(var + eps)
    lw = tl.load(lw_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    lb = tl.load(lb_ptr + cs, mask=cmask, other=0.0).to(tl.float32)
    y = diff * rstd[:, None] * lw[None, :] + lb[None, :]
    out = ((b * H + h) * W + ws).to(tl.int64) * C
    tl.store(y_ptr + out[:, None] + cs[None, :], y.to(y_ptr.dtype.element_ty), mask=(ws < W)[:, None] & cmask[None, :])


@functools.lru_cache(maxsize=None)
def _kernel(interpret: bool):
    """`_dw_ln_fwd` jitted; built on first use per mode (Triton reads TRITON_INTERPRET when it decorates)."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return triton.jit(_dw_ln_fwd)


def _reference(x, conv_w, conv_b, ln_w, ln_b, eps):  # x (B, C, H, W) -> (B, H, W, C), the textbook ops
    y = F.conv2d(x, conv_w, conv_b, padding=conv_w.shape[-1] // 2, groups=x.shape[1])
    return F.layer_norm(y.permute(0, 2, 3, 1), (x.shape[1],), ln_w, ln_b, eps)


class _DwConvLayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, conv_w, conv_b, ln_w, ln_b, eps, out_dtype):  # x (B, C, H, W) -> (B, H, W, C)
        import triton

        b, c, h, w = x.shape
        k = conv_w.shape[-1]
        xh = x.permute(0, 2, 3, 1).contiguous()  # a no-op view when x is channels_last
        taps = conv_w.reshape(c, k * k).t().contiguous()  # (k*k, C): each tap's C weights contiguous
        bias = conv_b if conv_b is not None else torch.zeros(c, device=x.device, dtype=conv_w.dtype)
        y = torch.empty(b, h, w, c, device=x.device, dtype=out_dtype)
        block_c = triton.next_power_of_2(c)
        block_w = max(1, min(triton.next_power_of_2(w), 4096 // block_c))  # ~4K fp32 accumulators per program
        grid = (b * h, triton.cdiv(w, block_w))
        _kernel(_interpreting())[grid](xh, taps, bias, ln_w, ln_b, y, h, w, c, eps, K=k, BLOCK_W=block_w, BLOCK_C=block_c)
        ctx.save_for_backward(x, conv_w, conv_b, ln_w, ln_b)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad_y):
        # Recompute the textbook forward in fp32 and differentiate it: exact gradients, no fused backward yet.
        saved = ctx.saved_tensors  # x, conv_w, conv_b, ln_w, ln_b
        inputs = [t.detach().float().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, ctx.needs_input_grad[:5])]
        with torch.enable_grad(), torch.autocast(saved[0].device.type, enabled=False):
            y = _reference(*inputs, ctx.eps)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, grad_y.float()))
        result = [next(grads).to(orig.dtype) if t is not None and t.requires_grad else None
                  for orig, t in zip(saved, inputs)]
        return (*result, None, None)


def dwconv_layernorm(x: torch.Tensor, conv: nn.Conv2d, norm: nn.LayerNorm) -> torch.Tensor:
    """`norm(conv(x).permute(0, 2, 3, 1))` in one Triton kernel: (B, C, H, W) -> (B, H, W, C).

    The output dtype is the autocast dtype inside an autocast region (the next op, pwconv1, casts to
    it anyway), else x's dtype; statistics are fp32 in both cases.
    """
    dev = x.device.type
    out_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype
    return _DwConvLayerNorm.apply(x, conv.weight, conv.bias, norm.weight, norm.bias, norm.eps, out_dtype)
