"""Triton kernels for the ConvNeXt block on CUDA (paper §1.2 of PAPER.md): dwconv + LN, and two GEMMs.

`dwconv_layernorm` fuses the block's depthwise 7x7 conv and its LayerNorm into one pass over an
NHWC tensor: one program per (image, row, tile of `BLOCK_W` columns) holds all C channels, reads
the 7x7 neighbourhood, adds the conv bias, normalises over C in fp32 and writes the (B, H, W, C)
input of pwconv1, so the conv output never goes to memory. Same parameters (the block's `dwconv`
and `norm`), so the state-dict layout is unchanged. The backward pass recomputes the textbook ops
(conv2d + layer_norm in fp32) under autograd: correct gradients, no fused backward yet.

Switch: `CONVNEXT_TRITON=0` turns all three kernels off; unset, it is used on CUDA when Triton imports;
`CONVNEXT_TRITON=1` also allows CPU tensors when Triton's interpreter is on (`TRITON_INTERPRET=1`),
which is how the tests check it without a GPU. It is never used inside torch.compile (inductor
generates its own fused kernels there). Not yet measured on a GPU.

The two pointwise convs are Triton GEMMs with their elementwise tails in the epilogue, so the
(rows, 4C) pre-activation and the (rows, C) branch output never make an extra round trip to memory:
`linear_bias_gelu` (pwconv1: x W^T + b, exact erf GELU) and `linear_bias_scale_residual` (pwconv2:
residual + gamma * (x W^T + b)). Both accumulate in fp32 and apply the epilogue in fp32. Their
backward passes are plain torch matmuls (GELU's derivative from the recomputed pre-activation):
correct, not fused. `Block` chains the three kernels when `use_triton` says so.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["dwconv_layernorm", "linear_bias_gelu", "linear_bias_scale_residual", "triton_available", "use_triton"]


@functools.cache
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


@functools.cache
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


# ---------------------------------------------------------------------------------------------
# pwconv1 / pwconv2: GEMMs with the block's elementwise ops in the epilogue.

_GELU, _SCALE_RESIDUAL = 1, 2  # the EPILOGUE argument of `_linear_fwd`


def _linear_fwd(x_ptr, w_ptr, b_ptr, g_ptr, r_ptr, y_ptr, M, N, K,
                stride_xm, stride_xk, stride_wn, stride_wk, stride_rm, stride_rn,
                EPILOGUE: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_GAMMA: tl.constexpr,
                DOT_PRECISION: tl.constexpr, UPCAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    # x: (M, K); w: (N, K) as stored by nn.Linear, read as W^T tiles; b, g: (N,); r, y: (M, N), y contiguous.
    pid = tl.program_id(0)
    grid_m = tl.cdiv(M, BLOCK_M)
    grid_n = tl.cdiv(N, BLOCK_N)
    # Grouped ordering: GROUP_M row tiles share each column tile of W while it is in L2.
    group = pid // (GROUP_M * grid_n)
    first_m = group * GROUP_M
    size_m = min(grid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * grid_n)) % size_m
    pid_n = (pid % (GROUP_M * grid_n)) // size_m
    rm = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # (BLOCK_M,) rows
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output channels
    rk = tl.arange(0, BLOCK_K)
    m_ok, n_ok = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        a = tl.load(x_ptr + rm[:, None] * stride_xm + (k0 + rk)[None, :] * stride_xk,
                    mask=m_ok[:, None] & k_ok[None, :], other=0.0)  # (BLOCK_M, BLOCK_K)
        bt = tl.load(w_ptr + (k0 + rk)[:, None] * stride_wk + rn[None, :] * stride_wn,
                     mask=k_ok[:, None] & n_ok[None, :], other=0.0)  # (BLOCK_K, BLOCK_N) of W^T
        if UPCAST:  # interpreter only (see `_launch`); bf16 products are exact in fp32, so same sums
            a, bt = a.to(tl.float32), bt.to(tl.float32)
        acc = tl.dot(a, bt, acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 1:  # exact GELU: v * Phi(v) = 0.5 v (1 + erf(v / sqrt 2))
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    mask = m_ok[:, None] & n_ok[None, :]
    if EPILOGUE == 2:  # residual + gamma * branch
        if HAS_GAMMA:
            acc *= tl.load(g_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        acc += tl.load(r_ptr + rm[:, None] * stride_rm + rn[None, :] * stride_rn, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + rm[:, None] * N + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


def _gemm_configs(interpret: bool):
    import triton

    if interpret:  # one small tile: the interpreter runs each program in numpy, and nothing to tune
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4})]
    # Hopper-sized tiles (bf16: 128x256x64 fits H100's 228 KB of shared memory at 3 stages) down to
    # smaller ones for ConvNeXt's narrow early-stage K = C (96) and late-stage small M; configs that
    # do not fit (e.g. fp32 at the largest tiles) fail to compile and the autotuner skips them.
    shapes = [(128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 32, 4, 4),
              (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 32, 5, 4)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for m, n, k, s, w in shapes]


@functools.cache
def _gemm(interpret: bool):
    """`_linear_fwd` jitted and autotuned per (M, N, K, epilogue, dtypes); built on first use per mode."""
    global tl
    import triton
    import triton.language

    tl = triton.language
    return triton.autotune(_gemm_configs(interpret), key=["M", "N", "K", "EPILOGUE", "HAS_GAMMA"])(triton.jit(_linear_fwd))


def _launch(x, w, b, epilogue, gamma=None, residual=None, out_dtype=None):
    """y (M, N) = epilogue(x (M, K) @ w.T + b) through `_linear_fwd`."""
    import triton

    (m, k), n = x.shape, w.shape[0]
    y = torch.empty(m, n, device=x.device, dtype=out_dtype or x.dtype)
    r = residual if residual is not None else y  # unused pointers get any valid tensor
    # fp32 operands: full fp32 products unless torch's own fp32 matmul may use TF32; 16-bit ones: the default.
    ieee = x.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    # Triton 3.8's interpreter multiplies the raw uint16 bits of bf16 operands in `tl.dot`: feed it fp32.
    interpret = _interpreting()
    grid = lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
    _gemm(interpret)[grid](
        x, w, b if b is not None else y, gamma if gamma is not None else y, r, y, m, n, k,
        x.stride(0), x.stride(1), w.stride(0), w.stride(1), r.stride(0), r.stride(1),
        EPILOGUE=epilogue, HAS_BIAS=b is not None, HAS_GAMMA=gamma is not None,
        DOT_PRECISION="ieee" if ieee else "tf32", UPCAST=interpret and x.dtype != torch.float32)
    return y


class _LinearBiasGelu(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):  # x (M, K), w (N, K), b (N,) or None, all one dtype -> (M, N)
        ctx.save_for_backward(x, w, b)
        return _launch(x, w, b, _GELU)

    @staticmethod
    def backward(ctx, grad_y):
        x, w, b = ctx.saved_tensors
        # GELU'(pre) needs the pre-activation: recompute it (one GEMM) rather than keep (M, N) alive.
        pre = F.linear(x, w, b)
        grad_pre = torch.ops.aten.gelu_backward(grad_y, pre, approximate="none")  # (M, N)
        return _linear_grads(ctx, grad_pre, x, w, b is not None)


class _LinearBiasScaleResidual(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, gamma, residual, out_dtype):  # x (M, K), w (N, K), residual (M, N) -> (M, N)
        ctx.save_for_backward(x, w, b, gamma)
        ctx.residual_dtype = residual.dtype
        return _launch(x, w, b, _SCALE_RESIDUAL, gamma, residual, out_dtype)

    @staticmethod
    def backward(ctx, grad_out):
        x, w, b, gamma = ctx.saved_tensors
        grad_gamma = None
        if gamma is not None and ctx.needs_input_grad[3]:  # d/d gamma of gamma * (x W^T + b): the branch itself
            grad_gamma = (grad_out.float() * F.linear(x, w, b).float()).sum(0).to(gamma.dtype)
        grad_branch = grad_out if gamma is None else grad_out.float() * gamma.float()
        grads = _linear_grads(ctx, grad_branch.to(x.dtype), x, w, b is not None)
        grad_res = grad_out.to(ctx.residual_dtype) if ctx.needs_input_grad[4] else None
        return (*grads, grad_gamma, grad_res, None)


def _linear_grads(ctx, grad_lin, x, w, has_bias):
    """(grad_x, grad_w, grad_b) of x W^T + b for grad_lin (M, N), each only where the input needs it."""
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    grad_x = grad_lin @ w if need_x else None  # (M, K)
    grad_w = grad_lin.t() @ x if need_w else None  # (N, K)
    grad_b = grad_lin.float().sum(0).to(w.dtype) if has_bias and need_b else None  # fp32 sum over M rows
    return grad_x, grad_w, grad_b


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def _as_rows(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])  # (..., C) -> (rows, C): a view for the contiguous NHWC tensors here


def linear_bias_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """Exact (erf) GELU of `x @ weight.T + bias` in one Triton GEMM, (..., K) -> (..., N).

    fp32 accumulation and epilogue; output in x's dtype, or the autocast dtype inside an autocast
    region (x, weight and bias are cast to it first, as autocast casts F.linear's inputs).
    """
    dtype = _compute_dtype(x)
    b = bias.to(dtype) if bias is not None else None
    y = _LinearBiasGelu.apply(_as_rows(x).to(dtype), weight.to(dtype), b)
    return y.view(*x.shape[:-1], weight.shape[0])


def linear_bias_scale_residual(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               gamma: torch.Tensor | None, residual: torch.Tensor) -> torch.Tensor:
    """`residual + gamma * (x @ weight.T + bias)` in one Triton GEMM, (..., K) -> (..., N).

    `gamma` (N,) None means no layer scale. The GEMM runs in x's dtype (or the autocast dtype);
    gamma, the bias and the residual are applied in fp32, and the result has the dtype the
    textbook expression promotes to (e.g. fp32 for an fp32 residual stream under bf16 autocast).
    """
    dtype = _compute_dtype(x)
    out_dtype = torch.promote_types(residual.dtype, dtype)
    if gamma is not None:
        out_dtype = torch.promote_types(out_dtype, gamma.dtype)
    b = bias.to(dtype) if bias is not None else None
    y = _LinearBiasScaleResidual.apply(_as_rows(x).to(dtype), weight.to(dtype), b, gamma, _as_rows(residual), out_dtype)
    return y.view(residual.shape)
