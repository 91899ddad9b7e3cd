"""Speed tricks used by the default ConvNeXt forward pass, kept here so `layers.py` stays readable.

Every helper computes what the textbook block computes (paper §1.2 of PAPER.md) up to fp32
rounding; `tests/bench/test_fast.py` checks each one against the plain formulation, and
`docs/benchmarks.md` has the measurements. On CPU a ConvNeXt forward is two big GEMMs per block
(pwconv1, pwconv2) surrounded by memory-bound passes; every pass we avoid is time saved:

- `to_channels_last`: run the whole network in `channels_last` memory format, so the block's
  NCHW <-> NHWC permutes (for LayerNorm and the Linears) are free views instead of copies, and
  oneDNN runs the depthwise conv in its native NHWC layout.
- `linear_gelu`: pwconv1 + exact (erf) GELU. For CPU fp32 inference this is one oneDNN matmul
  with GELU as a post-op (no separate bias and GELU passes over the 4C-wide activation);
  otherwise GELU runs in place when autograd does not need its input.
- `layer_scaled_linear`: gamma * pwconv2(x) [+ residual]. The layer scale gamma is folded into the
  (C, 4C) weight on the fly instead of multiplying the (B, H, W, C) output; gradients still reach
  gamma. For CPU fp32 inference the residual add is a oneDNN post-op of the same matmul.
- `add_residual_`: the residual add written into the fresh branch output.
- `_OneDNNLinear` (training on CPU, fp32): the same Linear (+ residual) as an autograd function
  whose forward and grad-input GEMMs run on oneDNN and whose grad-weight GEMM runs on MKL,
  whichever library measured faster for that shape.
- `depthwise_conv` (training on CPU, fp32 or bf16 autocast): the block's depthwise 7x7 conv with a faster
  weight gradient. oneDNN's depthwise grad-weight kernel is the slowest op of a CPU training step
  (8-10x a forward conv); we compute the same sums as a forward conv with one group per
  (image, channel) pair over batch chunks that stay in cache. Forward and grad-input are the
  standard kernels; only public ops are used.

The oneDNN ops are `torch.ops.mkldnn._linear_pointwise` (the kernels `torch.compile`'s CPU
backend emits for the same fusions). They have no autograd formula of their own, so the fused
post-op forms are used only when no gradient is being recorded, and training goes through
`_OneDNNLinear`. None of this runs inside `torch.compile` (inductor makes its own fusions there),
`torch.export`, TorchScript or ONNX export, on other devices, under autocast or in half
precision: those take the textbook order of operations, so exported graphs hold standard ops and
mixed-precision numerics are unchanged (gamma * W could underflow fp16: gamma starts at 1e-6).
`onednn_fusion_enabled(False)` switches the oneDNN paths off.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["to_channels_last", "linear_gelu", "layer_scaled_linear", "add_residual_", "depthwise_conv", "fuses_residual",
           "depthwise_kernel_takes", "fused_dw_norm_applies", "bf16_linears_apply", "fp32_mlp_applies",
           "onednn_fusion_enabled",
           "fast_depthwise_grad_enabled"]

# Switch for every oneDNN path below (benchmarks and tests flip it to compare).
_ONEDNN_FUSION = True


def onednn_fusion_enabled(enabled: bool | None = None) -> bool:
    """Get, or set with `enabled`, whether CPU fp32 inference and training may use the oneDNN paths."""
    global _ONEDNN_FUSION
    if enabled is not None:
        _ONEDNN_FUSION = bool(enabled)
    return _ONEDNN_FUSION


def _has_onednn_linear() -> bool:
    """Whether the private oneDNN fused-Linear ops exist here *and* compute the right thing.

    They are private PyTorch ops, so instead of trusting their presence we run each form once on
    a small input against the textbook ops; any error or mismatch (another PyTorch build, a CPU
    oneDNN does not support) falls back to plain PyTorch. `CONVNEXT_NO_ONEDNN=1` disables them.
    """
    if os.environ.get("CONVNEXT_NO_ONEDNN") or not torch.backends.mkldnn.is_available():
        return False
    try:
        ops = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, r = torch.randn(2, 3, 4, 8, generator=g), torch.randn(2, 3, 4, 16, generator=g)
        w, b = torch.randn(16, 8, generator=g), torch.randn(16, generator=g)
        with torch.no_grad():
            checks = [
                (ops(x, w, b, "gelu", [], "none"), F.gelu(F.linear(x, w, b))),
                (ops(x, w, b, "none", [], ""), F.linear(x, w, b)),
                (ops.binary(x, r, w, b, "add"), F.linear(x, w, b) + r),
            ]
        return all(torch.allclose(out, ref, atol=1e-4, rtol=1e-4) for out, ref in checks)
    except Exception:  # noqa: BLE001 - any failure of a private op means: do not use it
        return False


_ONEDNN_LINEAR = _has_onednn_linear()

# Switch for the depthwise weight-gradient path (`CONVNEXT_NO_FAST_DWGRAD=1` turns it off).
_FAST_DW_GRAD = not os.environ.get("CONVNEXT_NO_FAST_DWGRAD")


def fast_depthwise_grad_enabled(enabled: bool | None = None) -> bool:
    """Get, or set with `enabled`, whether CPU fp32 training uses `depthwise_conv`'s weight gradient."""
    global _FAST_DW_GRAD
    if enabled is not None:
        _FAST_DW_GRAD = bool(enabled)
    return _FAST_DW_GRAD


def to_channels_last(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in `channels_last` memory format; a no-op when it already is.

    The logical shape is unchanged, so every module sees the same tensor; only the strides differ.
    Channels-last propagates through conv, LayerNorm-over-permute and elementwise ops, so
    converting the network input once is enough.
    """
    return x.contiguous(memory_format=torch.channels_last)


def _plain_fp32(x: torch.Tensor) -> bool:
    """True in eager mode when `x` is fp32 and no autocast region would change the dtype of the next op.

    Graph capture is checked first, so the autocast probe never runs under torch.compile: dynamo
    does not trace `torch._C._is_autocast_available` in every PyTorch version (graph break and a
    warning), and every caller takes the textbook path while compiling anyway.
    """
    if _tracing():
        return False
    device = x.device.type  # "meta" (used by the MAC counter) has no autocast at all
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    return x.dtype == torch.float32 and not autocast


def _needs_grad(x: torch.Tensor, linear: nn.Linear) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or linear.weight.requires_grad)


def _tracing() -> bool:
    """Inside torch.compile / torch.export, TorchScript or ONNX export: graph capture that must see
    standard ops (the private oneDNN ops have no fake-tensor, TorchScript or ONNX support)."""
    return (
        torch.compiler.is_compiling()
        or torch.jit.is_tracing()
        or torch.jit.is_scripting()
        or torch.onnx.is_in_onnx_export()
    )


def _onednn_applies(x: torch.Tensor, linear: nn.Linear) -> bool:
    """CPU fp32 outside graph capture and autocast, with oneDNN available and the switch on."""
    return (
        _ONEDNN_FUSION
        and _ONEDNN_LINEAR
        and x.device.type == "cpu"
        and _plain_fp32(x)  # also False while compiling / exporting
        and linear.weight.dtype == torch.float32
    )


def fuses_residual(x: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether `layer_scaled_linear(x, linear, gamma, residual)` adds the residual inside the GEMM
    (a oneDNN post-op: eager CPU fp32, inference or training). Elsewhere callers add it themselves."""
    return _onednn_applies(x, linear)


def _use_onednn(x: torch.Tensor, linear: nn.Linear) -> bool:
    """The fused inference ops apply: `_onednn_applies` and no gradient is being recorded."""
    return _onednn_applies(x, linear) and not _needs_grad(x, linear)


class _OneDNNLinear(torch.autograd.Function):
    """y = x W^T + b [+ residual] for training on CPU, with each GEMM on its faster library.

    Measured on this project's CPU (docs/benchmarks.md): oneDNN is faster than MKL's sgemm for the
    forward (with the residual add as a post-op) and for grad_x = grad_y W; MKL is faster for
    grad_W = grad_y^T x (a long reduction over B*H*W rows). Same maths as F.linear + add.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, residual):  # x (..., C_in), weight (C_out, C_in), residual (..., C_out)
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.has_residual = bias is not None, residual is not None
        if residual is None:
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")

    @staticmethod
    def backward(ctx, grad_y):
        x, weight = ctx.saved_tensors
        grad_y2 = grad_y.reshape(-1, grad_y.shape[-1])  # (rows, C_out)
        grad_x = grad_w = grad_b = grad_res = None
        if ctx.needs_input_grad[0]:  # (rows, C_out) @ (C_out, C_in) as oneDNN's x @ W^T form
            grad_x = torch.ops.mkldnn._linear_pointwise(grad_y2, weight.t().contiguous(), None, "none", [], "")
            grad_x = grad_x.view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = grad_y2.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_y2.sum(0)
        if ctx.has_residual and ctx.needs_input_grad[3]:
            grad_res = grad_y
        return grad_x, grad_w, grad_b, grad_res


def _linear(x, linear, weight, bias, residual=None):
    """x W^T + b [+ residual], through `_OneDNNLinear` where it applies, else F.linear."""
    if _onednn_applies(x, linear):
        return _OneDNNLinear.apply(x, weight, bias, residual)
    # The module's own weights: call the module, so that graph capture records an nn.Linear (PT2E's
    # X86 quantizer annotates Linears by their source module; an F.linear with the weight passed in
    # was left in float: pwconv2 of every block).
    out = linear(x) if weight is linear.weight and bias is linear.bias else F.linear(x, weight, bias)
    return out if residual is None else add_residual_(out, residual)


def linear_gelu(x: torch.Tensor, linear: nn.Linear) -> torch.Tensor:
    """Exact (erf) GELU of `linear(x)`, (..., C_in) -> (..., C_out)."""
    if _use_onednn(x, linear):
        # One oneDNN matmul with bias and exact GELU ("none" = no tanh approximation) as post-ops.
        return torch.ops.mkldnn._linear_pointwise(x, linear.weight, linear.bias, "gelu", [], "none")
    if _needs_grad(x, linear):
        return F.gelu(_linear(x, linear, linear.weight, linear.bias))  # GELU's backward needs its input
    return torch._C._nn.gelu_(linear(x))  # in place: one 4C-wide buffer fewer (on CPU, fewer page faults)


def layer_scaled_linear(
    x: torch.Tensor,
    linear: nn.Linear,
    gamma: torch.Tensor | None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`residual + gamma * linear(x)` on channels-last tensors, (..., C_in) -> (..., C_out).

    `gamma` (C_out,) may be None (no layer scale), `residual` (..., C_out) may be None (no add).
    In eager fp32, gamma * (x W^T + b) is computed as x (gamma W)^T + gamma b whenever the weight
    is the smaller tensor (rows of x >= C_in, i.e. all but the last stages at tiny batch sizes): a
    (C_out, C_in) multiply instead of a (rows, C_out) one, and autograd still reaches gamma.
    """
    rows = x.numel() // x.shape[-1]
    fold = _plain_fp32(x) and rows >= linear.in_features
    if gamma is not None and not fold:
        # Textbook order: gamma scales the output. Under autocast / half precision this is also
        # the safe order (gamma * W could underflow fp16: gamma starts at 1e-6), and under
        # torch.compile the cheap one (inductor fuses the multiply into the GEMM's epilogue).
        out = gamma * linear(x)
        return out if residual is None else add_residual_(out, residual)
    weight, bias = linear.weight, linear.bias
    if gamma is not None:
        weight = weight * gamma[:, None]
        bias = bias * gamma if bias is not None else None
    if residual is not None and _use_onednn(x, linear) and residual.dtype == torch.float32:
        # residual + x W^T + b in one oneDNN matmul (the add is a "sum" post-op).
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    return _linear(x, linear, weight, bias, residual)


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def depthwise_kernel_takes(channels: int, kernel_size, stride, padding, dilation, groups: int) -> bool:
    """Whether our one-pass depthwise conv + LayerNorm kernels (`convnext.deploy.amx_gelu`) take this
    convolution: depthwise 7 x 7, stride 1, padding 3, dilation 1, over a multiple of 16 channels."""
    return (_pair(kernel_size) == (7, 7) and _pair(stride) == (1, 1) and _pair(padding) == (3, 3)
            and _pair(dilation) == (1, 1) and groups == channels and channels % 16 == 0)


def _cpu_inference(x: torch.Tensor, params) -> bool:
    """On CPU, not exporting (torch.export, ONNX, TorchScript: those see the standard ops) and not recording
    gradients for `x` or any of `params`."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()
    return (
        x.device.type == "cpu"
        and not exporting
        and not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())
        and not (torch.is_grad_enabled() and (x.requires_grad or any(
            p is not None and p.requires_grad for p in params)))
    )


def fused_dw_norm_applies(x: torch.Tensor, conv: nn.Conv2d, norm: nn.Module) -> bool:
    """Whether a block's `norm(conv(x).permute(0, 2, 3, 1))` may run as one `convnext::dwconv_ln` call (our
    AVX512 kernel, `convnext.deploy.amx_gelu`): CPU inference in fp32 / bf16, eager or under torch.compile,
    not while exporting (torch.export, ONNX, TorchScript) or recording gradients, a convolution the kernel
    takes (`depthwise_kernel_takes`), and an affine LayerNorm. The caller checks that the
    module was switched to it (`fast_cpu_model` does so where the kernel runs)."""
    return (
        x.dtype in (torch.float32, torch.bfloat16)
        and conv.weight.dtype == x.dtype
        and _cpu_inference(x, (conv.weight, getattr(norm, "weight", None)))
        and conv.in_channels == conv.out_channels and conv.padding_mode == "zeros" and conv.bias is not None
        and depthwise_kernel_takes(conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                                   conv.groups)
        and isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
        and tuple(norm.normalized_shape) == (conv.out_channels,)
    )


def bf16_linears_apply(x: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether a block's pwconv1 + GELU and pwconv2 + residual may run as our bf16 AMX GEMMs
    (`convnext::linear_gelu_bf16`, `convnext::linear_residual_bf16`, or both in one `convnext::mlp_bf16`
    pass): CPU inference in bf16, eager or under
    torch.compile, not while exporting or recording gradients. The caller checks that the module was
    switched to them (`fast_cpu_model` packs the weights where the kernels run)."""
    return x.dtype == torch.bfloat16 and linear.weight.dtype == torch.bfloat16 and _cpu_inference(
        x, (linear.weight,))


def fp32_mlp_applies(x: torch.Tensor, linear: nn.Linear) -> bool:
    """Whether a block's pwconv1 + GELU + pwconv2 + residual may run as our one-pass fp32 kernel
    (`convnext::mlp_fp32`): CPU inference in fp32 outside autocast, eager or under torch.compile, not while
    exporting or recording gradients. The caller checks that the module was switched to it (`fast_cpu_model`
    packs the weights where the kernel runs)."""
    return (x.dtype == torch.float32 and linear.weight.dtype == torch.float32 and _cpu_inference(x, (linear.weight,))
            and (torch.compiler.is_compiling() or not torch.is_autocast_enabled("cpu")))


def add_residual_(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """`shortcut + branch`, written into `branch` when both have the same dtype.

    `branch` must be a fresh tensor the caller owns (the output of a Linear, a multiply or drop
    path): none of those needs its own output for the backward pass, so the in-place add is legal
    under autograd too. When dtypes differ (mixed precision) we allocate as the textbook sum does,
    so type promotion is unchanged.
    """
    if branch.dtype != shortcut.dtype:
        return shortcut + branch
    return branch.add_(shortcut)


# Elements of one batch chunk in the depthwise weight gradient: 2^18 fp32 values (1 MiB) per
# operand keeps both operands of a chunk in L2. Measured on this project's CPU (ConvNeXt-T shapes,
# batch 16 and 64): 2.5-15x faster than the native kernel; larger chunks lose the gain.
_DW_GRAD_CHUNK = 1 << 18


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """d(loss)/d(weight) of a stride-1 "same"-padded depthwise conv, shape (C, 1, k, k).

    grad_w[c, i, j] = sum over b, h, w of x_pad[b, c, h + i, w + j] * grad_out[b, c, h, w]: for every
    (b, c) pair this is a cross-correlation of the padded input with grad_out, i.e. a forward conv
    with grad_out as the kernel and one group per pair. Batch chunks keep the operands in cache.
    """
    b, c, h, w = x.shape
    step = max(1, _DW_GRAD_CHUNK // (c * h * w))
    total = None
    for start in range(0, b, step):
        xs, gs = x[start : start + step], grad_out[start : start + step]
        n = xs.shape[0]
        part = F.conv2d(xs.reshape(1, n * c, h, w), gs.reshape(n * c, 1, h, w), padding=kernel_size // 2, groups=n * c)
        part = part.view(n, c, kernel_size, kernel_size).sum(0)
        total = part if total is None else total.add_(part)
    return total.unsqueeze(1)


class _DepthwiseConv(torch.autograd.Function):
    """Stride-1, "same"-padded depthwise conv whose weight gradient is `depthwise_weight_grad`."""

    @staticmethod
    def forward(ctx, x, weight, bias):  # x (B, C, H, W), weight (C, 1, k, k), bias (C,) or None
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, padding=weight.shape[-1] // 2, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        k = weight.shape[-1]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the standard kernel: as fast as the forward conv
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], x.shape[1],
                [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            if x.dtype == torch.float32:
                grad_w = depthwise_weight_grad(x, grad_out, k)
            else:  # bf16 (autocast): the sums in fp32, 4.3-9x faster here than oneDNN's bf16 kernel
                grad_w = depthwise_weight_grad(x.float(), grad_out.float(), k).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b


def depthwise_conv(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`conv(x)` for the block's depthwise conv, with the fast weight gradient where it applies:
    CPU training in fp32 or under bf16 autocast, outside graph capture, stride 1, odd square kernel,
    "same" padding, one group per channel. Everything else is the plain `conv(x)`.

    Under bf16 autocast the conv runs on bf16 copies of input, weight and bias, as autocast's own
    conv would; only the weight gradient differs: summed in fp32 (oneDNN's bf16 depthwise
    weight-gradient kernel measured 3-9x slower than its fp32 one on an AMX CPU, docs/benchmarks.md).
    """
    weight = conv.weight
    if not (
        _FAST_DW_GRAD
        and weight.requires_grad
        and torch.is_grad_enabled()
        and x.device.type == "cpu"
        and weight.dtype == torch.float32
        and not _tracing()
        and conv.groups == conv.in_channels == conv.out_channels == x.shape[1]
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.kernel_size[0] == conv.kernel_size[1]
        and conv.kernel_size[0] % 2 == 1
        and conv.padding == (conv.kernel_size[0] // 2,) * 2
        and conv.padding_mode == "zeros"
    ):
        return conv(x)
    if _plain_fp32(x):
        return _DepthwiseConv.apply(x, weight, conv.bias)
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16:
        bf16 = torch.bfloat16
        bias = conv.bias.to(bf16) if conv.bias is not None else None
        with torch.autocast("cpu", enabled=False):  # the casts autocast would make, made here
            return _DepthwiseConv.apply(x.to(bf16), weight.to(bf16), bias)
    return conv(x)
