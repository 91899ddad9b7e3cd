"""Each speed trick of `convnext.models.fast` / `inference` computes what the textbook block computes."""
import contextlib

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convnext
from convnext.models import fast
from convnext.models.inference import optimize_for_inference
from convnext.models.layers import Block

TOL = dict(atol=1e-5, rtol=1e-5)


def textbook_block(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """The block exactly as PAPER.md §1.2 / the official code writes it, without any trick."""
    shortcut = x
    x = blk.dwconv(x).permute(0, 2, 3, 1)
    x = blk.pwconv2(blk.grn(F.gelu(blk.pwconv1(blk.norm(x)))))
    if blk.gamma is not None:
        x = blk.gamma * x
    return shortcut + blk.drop_path(x.permute(0, 3, 1, 2))


def spread(blk: Block) -> Block:
    """Layer scale / GRN away from their near-zero init, so the branch matters in comparisons."""
    with torch.no_grad():
        for name, p in blk.named_parameters():
            if name == "gamma" or name.startswith("grn."):
                p.uniform_(0.1, 1.0)
    return blk


@contextlib.contextmanager
def onednn(enabled: bool):
    before = fast.onednn_fusion_enabled()
    fast.onednn_fusion_enabled(enabled)
    try:
        yield
    finally:
        fast.onednn_fusion_enabled(before)


def test_to_channels_last_keeps_values_and_shape():
    x = torch.randn(2, 5, 6, 7)
    y = fast.to_channels_last(x)
    assert y.shape == x.shape and torch.equal(y, x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert fast.to_channels_last(y) is y  # already channels-last: no copy


@pytest.mark.parametrize("fused", [True, False])
def test_linear_gelu_is_exact_gelu(fused):
    lin = nn.Linear(16, 64)
    x = torch.randn(2, 5, 5, 16)
    ref = F.gelu(lin(x))  # exact erf GELU
    with onednn(fused), torch.no_grad():
        assert torch.allclose(fast.linear_gelu(x, lin), ref, **TOL)
    # with autograd recording: out-of-place, and the gradients are the textbook ones
    out = fast.linear_gelu(x, lin)
    (g_ours,) = torch.autograd.grad(out.square().sum(), lin.weight)
    (g_ref,) = torch.autograd.grad(F.gelu(lin(x)).square().sum(), lin.weight)
    assert torch.allclose(g_ours, g_ref, **TOL)


@pytest.mark.parametrize("rows", [4, 200])  # fewer rows than C_in: gamma scales the output; more: the weight
@pytest.mark.parametrize("with_residual", [True, False])
def test_layer_scaled_linear_matches_and_differentiates(rows, with_residual):
    lin = nn.Linear(32, 8)
    gamma = nn.Parameter(torch.rand(8) + 0.1)
    x = torch.randn(rows, 32, requires_grad=True)
    res = torch.randn(rows, 8) if with_residual else None

    def ref():
        out = gamma * lin(x)
        return out + res if with_residual else out

    out = fast.layer_scaled_linear(x, lin, gamma, residual=res)
    assert torch.allclose(out, ref(), **TOL)
    params = [x, lin.weight, lin.bias, gamma]
    grads = torch.autograd.grad(out.sin().sum(), params)
    ref_grads = torch.autograd.grad(ref().sin().sum(), params)
    for g, r in zip(grads, ref_grads):
        assert torch.allclose(g, r, **TOL)
    for fused in (True, False):  # inference paths (oneDNN binary-add post-op, and plain)
        with onednn(fused), torch.no_grad():
            assert torch.allclose(fast.layer_scaled_linear(x, lin, gamma, residual=res), ref(), **TOL)


def test_layer_scaled_linear_keeps_textbook_order_under_autocast():
    lin = nn.Linear(32, 8)
    gamma = torch.full((8,), 1e-6)
    x = torch.randn(64, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast.layer_scaled_linear(x, lin, gamma)
        ref = gamma * lin(x)
    assert out.dtype == ref.dtype == torch.float32  # gamma (fp32) * bf16 output, as in the textbook
    assert torch.equal(out, ref)


def test_add_residual_in_place_only_for_equal_dtypes():
    branch, shortcut = torch.randn(3, 4), torch.randn(3, 4)
    expected = shortcut + branch
    out = fast.add_residual_(branch, shortcut)
    assert out is branch and torch.equal(out, expected)
    half = torch.randn(3, 4, dtype=torch.bfloat16)
    out = fast.add_residual_(half, shortcut)
    assert out is not half and out.dtype == torch.float32


@pytest.mark.parametrize("use_grn", [False, True])
@pytest.mark.parametrize("channels_last", [True, False])
def test_block_matches_textbook_in_inference(use_grn, channels_last):
    blk = spread(Block(32, use_grn=use_grn, layer_scale_init_value=0 if use_grn else 1e-6)).eval()
    x = torch.randn(2, 32, 14, 14)
    if channels_last:
        x = fast.to_channels_last(x)
    with torch.no_grad():
        ref = textbook_block(blk, x)
        for fused in (True, False):
            with onednn(fused):
                assert torch.allclose(blk(x), ref, **TOL)
    assert torch.allclose(blk(x), ref, **TOL)  # eval mode but autograd on: the autograd-safe path


def test_block_training_step_matches_textbook():
    blk = spread(Block(32))
    x = fast.to_channels_last(torch.randn(2, 32, 14, 14))
    out = blk(x)
    ref = textbook_block(blk, x)
    assert torch.allclose(out, ref, **TOL)
    grads = torch.autograd.grad(out.tanh().sum(), list(blk.parameters()))
    ref_grads = torch.autograd.grad(ref.tanh().sum(), list(blk.parameters()))
    for (name, _), g, r in zip(blk.named_parameters(), grads, ref_grads):
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), name


@pytest.mark.parametrize(
    "shape, kernel, bias, channels_last",
    [
        ((3, 8, 9, 13), 7, True, True),  # non-square, odd sizes
        ((64, 24, 10, 10), 7, True, False),  # batch split into several cache-sized chunks
        ((2, 16, 1, 1), 7, False, True),  # 1x1 map (a 32px image's last stage)
        ((4, 12, 6, 5), 3, True, True),
    ],
)
def test_depthwise_conv_gradients_match_conv2d(shape, kernel, bias, channels_last):
    b, c, h, w = shape
    conv = nn.Conv2d(c, c, kernel, padding=kernel // 2, groups=c, bias=bias)
    x = torch.randn(shape)
    if channels_last:
        x = fast.to_channels_last(x)
    x.requires_grad_(True)
    before = fast.fast_depthwise_grad_enabled()
    try:
        fast.fast_depthwise_grad_enabled(True)
        out = fast.depthwise_conv(x, conv)
        assert type(out.grad_fn).__name__ == "_DepthwiseConvBackward"  # the fast path really ran
        fast.fast_depthwise_grad_enabled(False)
        ref = fast.depthwise_conv(x, conv)
        assert type(ref.grad_fn).__name__ != "_DepthwiseConvBackward"
    finally:
        fast.fast_depthwise_grad_enabled(before)
    assert torch.allclose(out, ref, **TOL)
    upstream = torch.randn(shape)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    grads = torch.autograd.grad(out, params, upstream)
    ref_grads = torch.autograd.grad(ref, params, upstream)
    for name, g, r in zip(["x", "weight", "bias"], grads, ref_grads):
        assert g.shape == r.shape, name
        assert torch.allclose(g, r, atol=1e-4, rtol=1e-4), name


def test_depthwise_conv_under_bf16_autocast_matches_autocast_conv2d():
    """Training under CPU bf16 autocast: the same bf16 forward as autocast's conv, gradients that agree
    with autocast's (the weight gradient summed in fp32, so closer to the fp32 truth than bf16 sums)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 7, padding=3, groups=16)
    x = fast.to_channels_last(torch.randn(4, 16, 14, 14)).requires_grad_(True)
    upstream = torch.randn(4, 16, 14, 14)
    params = [x, conv.weight, conv.bias]
    with torch.autocast("cpu", torch.bfloat16):
        out = fast.depthwise_conv(x, conv)
        ref = conv(x)
    assert type(out.grad_fn).__name__ == "_DepthwiseConvBackward" and out.dtype == ref.dtype == torch.bfloat16
    assert torch.equal(out, ref)  # same bf16 operands, same kernel
    grads = torch.autograd.grad(out, params, upstream)
    ref_grads = torch.autograd.grad(ref, params, upstream)
    exact = torch.autograd.grad(F.conv2d(x, conv.weight, conv.bias, padding=3, groups=16), params, upstream)
    for name, g, r, e in zip(["x", "weight", "bias"], grads, ref_grads, exact):
        assert g.dtype == r.dtype and g.shape == r.shape, name
        assert torch.allclose(g.float(), r.float(), atol=0.05, rtol=0.02), name
        assert (g.float() - e).norm() <= (r.float() - e).norm() * 1.5 + 1e-6, name  # no less accurate


def test_depthwise_conv_plain_outside_cpu_fp32_training():
    conv = nn.Conv2d(8, 8, 7, padding=3, groups=8)
    x = torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert fast.depthwise_conv(x, conv).grad_fn is None
    conv.double()
    assert type(fast.depthwise_conv(x.double(), conv).grad_fn).__name__ != "_DepthwiseConvBackward"
    strided = nn.Conv2d(8, 8, 7, stride=2, padding=3, groups=8)
    assert torch.allclose(fast.depthwise_conv(x, strided), strided(x))


def test_block_drop_path_in_training_matches_textbook():
    blk = spread(Block(32, drop_path=0.5)).train()
    x = torch.randn(8, 32, 7, 7)
    torch.manual_seed(3)
    out = blk(x)
    torch.manual_seed(3)
    assert torch.allclose(out, textbook_block(blk, x), **TOL)


def spread_atto():
    """convnext_atto in eval mode with every block's layer scale and biases spread (see `spread`)."""
    model = convnext.create_model("convnext_atto").eval()
    for blk in model.modules():
        if isinstance(blk, Block):
            spread(blk)
    return model


def test_whole_model_fused_vs_plain_and_channels_last_output():
    model = spread_atto()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        with onednn(False):
            plain = model(x)
        fused = model(x)
    assert torch.allclose(fused, plain, atol=1e-4)
    feats = model.forward_features(x)
    assert feats.is_contiguous(memory_format=torch.channels_last)


def test_optimize_for_inference_folds_layer_scale():
    model = spread_atto()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    optimize_for_inference(model)
    assert not any(k.endswith("gamma") for k in model.state_dict())
    assert not any(p.requires_grad for p in model.parameters())
    assert all(blk.gamma is None for blk in model.modules() if isinstance(blk, Block))
    assert torch.allclose(model(x), ref, atol=1e-5)  # no no_grad needed once frozen


@pytest.mark.filterwarnings("ignore")  # torch.jit.trace deprecation and shape-as-constant warnings
def test_traced_graph_uses_standard_ops():
    """TorchScript tracing / ONNX export must not capture the private oneDNN ops."""
    model = convnext.create_model("convnext_atto").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x)
        assert "mkldnn::_linear_pointwise" not in str(traced.inlined_graph)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def test_onednn_probe_falls_back_when_disabled():
    # The private oneDNN ops are only used when a start-up probe proves them right; the env switch turns them off.
    import subprocess
    import sys

    code = "import convnext.models.fast as f; print(f._ONEDNN_LINEAR)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**__import__("os").environ, "CONVNEXT_NO_ONEDNN": "1"}, check=True)
    assert out.stdout.strip() == "False"
