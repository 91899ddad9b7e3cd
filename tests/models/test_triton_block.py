"""The Triton kernels of the Block (dwconv 7x7 + LayerNorm, and the two GEMMs with their epilogues),
run by Triton's CPU interpreter (no GPU needed), against the textbook ops.

Triton reads TRITON_INTERPRET when it is first imported, and other tests in the same process may
import it first (inductor does), so `test_kernels_under_the_interpreter` reruns this file in a fresh
process with TRITON_INTERPRET=1; the kernel tests run only there.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from convnext.models import triton_block
from convnext.models.layers import Block
from convnext.models.triton_block import (
    dwconv_layernorm,
    linear_bias_gelu,
    linear_bias_scale_residual,
    triton_available,
    use_triton,
)

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
CHILD_TESTS = 23  # tests in this file that run in the child (interpreter) process


@pytest.fixture
def interpreter(monkeypatch):
    if not INTERPRETED:
        pytest.skip("runs in the child process of test_kernels_under_the_interpreter")
    monkeypatch.setenv("CONVNEXT_TRITON", "1")


@pytest.mark.skipif(INTERPRETED, reason="this is the child process")
def test_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CONVNEXT_TRITON="1")
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider"],
                         env=env, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert f"{CHILD_TESTS} passed" in run.stdout, run.stdout[-3000:]  # every interpreter test ran (none skipped)


def _block(c: int) -> Block:
    torch.manual_seed(0)
    blk = Block(c, layer_scale_init_value=0.5)
    with torch.no_grad():
        blk.norm.weight.uniform_(0.5, 1.5), blk.norm.bias.uniform_(-0.5, 0.5)
    return blk


def _textbook(blk: Block, x: torch.Tensor) -> torch.Tensor:
    return blk.norm(blk.dwconv(x).permute(0, 2, 3, 1))


@pytest.mark.parametrize("shape", [(2, 8, 5, 6), (1, 12, 9, 3)])  # C not a power of two; W < kernel
def test_forward_matches_textbook_ops_fp32(interpreter, shape):
    blk = _block(shape[1])
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    assert use_triton(x, blk.dwconv, blk.norm)
    out = dwconv_layernorm(x, blk.dwconv, blk.norm)
    assert out.shape == (shape[0], shape[2], shape[3], shape[1]) and out.dtype == torch.float32
    torch.testing.assert_close(out, _textbook(blk, x), atol=1e-5, rtol=1e-5)


def test_forward_bf16_within_bf16_tolerance(interpreter):
    blk = _block(8)
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    out = dwconv_layernorm(x.bfloat16(), blk.dwconv.bfloat16(), blk.norm.bfloat16())
    assert out.dtype == torch.bfloat16
    ref = _textbook(_block(8), x)  # fp32 textbook ops on the same (bf16-rounded) weights and inputs
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)


def test_backward_gives_the_textbook_gradients(interpreter):
    blk = _block(8)
    x = torch.randn(2, 8, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(2, 5, 5, 8)
    params = [blk.dwconv.weight, blk.dwconv.bias, blk.norm.weight, blk.norm.bias]
    ref = torch.autograd.grad(_textbook(blk, x), [x, *params], grad)
    out = torch.autograd.grad(dwconv_layernorm(x, blk.dwconv, blk.norm), [x, *params], grad)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_not_selected_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CONVNEXT_TRITON", raising=False)
    blk = _block(8)
    assert not use_triton(torch.randn(1, 8, 4, 4), blk.dwconv, blk.norm)


# --- the GEMM kernels (pwconv1 + bias + GELU; pwconv2 + bias + layer scale + residual) -------------

def _gemm_operands(m: int, k: int, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    w = torch.randn(n, k, generator=g) / k**0.5
    b, gamma, res = torch.randn(n, generator=g), torch.rand(n, generator=g) + 0.5, torch.randn(m, n, generator=g)
    return x, w, b, gamma, res


# (rows, K, N): the Block's pwconv1 / pwconv2 at B=2, H=W=7, C=16; and sizes off the 32x32x16 tile.
GEMM_SHAPES = [(98, 16, 64), (98, 64, 16), (37, 24, 40)]


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
def test_linear_bias_gelu_fp32(interpreter, m, k, n):
    x, w, b, _, _ = _gemm_operands(m, k, n)
    out = linear_bias_gelu(x, w, b)
    assert out.shape == (m, n) and out.dtype == torch.float32
    torch.testing.assert_close(out, F.gelu(F.linear(x, w, b)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("m,k,n", GEMM_SHAPES)
@pytest.mark.parametrize("gamma", [True, False])
def test_linear_bias_scale_residual_fp32(interpreter, m, k, n, gamma):
    x, w, b, g, res = _gemm_operands(m, k, n)
    g = g if gamma else None
    out = linear_bias_scale_residual(x, w, b, g, res)
    ref = res + (g if gamma else 1.0) * F.linear(x, w, b)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_gemms_bf16_within_bf16_tolerance(interpreter):
    x, w, b, g, res = (t.bfloat16() for t in _gemm_operands(98, 64, 48))
    ref_x, ref_w, ref_b, ref_g, ref_res = (t.float() for t in (x, w, b, g, res))  # same rounded operands, fp32 ops
    out = linear_bias_gelu(x, w, b)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), F.gelu(F.linear(ref_x, ref_w, ref_b)), atol=2e-2, rtol=2e-2)
    out = linear_bias_scale_residual(x, w, b, g, res)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref_res + ref_g * F.linear(ref_x, ref_w, ref_b), atol=2e-2, rtol=2e-2)
    # Under autocast the GEMM runs in bf16 and the fp32 residual stream keeps its dtype, as in the textbook.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_bias_scale_residual(ref_x, ref_w, ref_b, ref_g, ref_res)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref_res + ref_g * F.linear(ref_x, ref_w, ref_b), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("gamma", [True, False])
def test_gemm_gradients_match_autograd(interpreter, gamma):
    x, w, b, g, res = (t.requires_grad_() for t in _gemm_operands(37, 24, 40))
    inputs = [x, w, b, g, res] if gamma else [x, w, b, res]
    g_or_none = g if gamma else None
    for fused, textbook, grad_out in [
        (lambda: linear_bias_gelu(x, w, b), lambda: F.gelu(F.linear(x, w, b)), torch.randn(37, 40)),
        (lambda: linear_bias_scale_residual(x, w, b, g_or_none, res),
         lambda: res + (g if gamma else 1.0) * F.linear(x, w, b), torch.randn(37, 40)),
    ]:
        ref = torch.autograd.grad(textbook(), inputs, grad_out, allow_unused=True)
        out = torch.autograd.grad(fused(), inputs, grad_out, allow_unused=True)
        for a, r in zip(out, ref):
            assert (a is None) == (r is None)
            if a is not None:
                torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


# --- the whole Block on the Triton path ------------------------------------------------------------

def _textbook_block(blk: Block, x: torch.Tensor) -> torch.Tensor:
    """x + gamma * pwconv2(grn(gelu(pwconv1(norm(dwconv(x)))))), the paper's block in plain ops (no drop path)."""
    y = blk.grn(F.gelu(blk.pwconv1(_textbook(blk, x))))
    y = blk.pwconv2(y)
    y = y if blk.gamma is None else blk.gamma * y
    return x + y.permute(0, 3, 1, 2)


def _random_block(c: int, **kwargs) -> Block:
    torch.manual_seed(0)
    blk = Block(c, **kwargs)
    with torch.no_grad():
        for p in blk.parameters():  # no zero GRN / tiny gamma: every term must show in the output
            p.copy_(torch.randn_like(p) * 0.3)
        blk.norm.weight.uniform_(0.5, 1.5)
    return blk


def _count_kernels(monkeypatch) -> list[str]:
    calls = []
    for fn in (triton_block._DwConvLayerNorm, triton_block._LinearBiasGelu, triton_block._LinearBiasScaleResidual):
        apply = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _apply=apply, _name=fn.__name__: calls.append(_name) or _apply(*a))
    return calls


ALL_THREE = ["_DwConvLayerNorm", "_LinearBiasGelu", "_LinearBiasScaleResidual"]


@pytest.mark.parametrize("kwargs", [{"layer_scale_init_value": 0.5}, {"layer_scale_init_value": 0.0},
                                    {"layer_scale_init_value": 0.0, "use_grn": True}], ids=["gamma", "no_gamma", "v2_grn"])
def test_block_triton_path_fp32_forward_and_gradients(interpreter, monkeypatch, kwargs):
    blk = _random_block(16, **kwargs)
    assert (blk.gamma is None) == (kwargs["layer_scale_init_value"] == 0)
    x = torch.randn(2, 16, 7, 7).contiguous(memory_format=torch.channels_last).requires_grad_()
    calls = _count_kernels(monkeypatch)
    out = blk(x)
    assert calls == ALL_THREE
    ref = _textbook_block(blk, x)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn_like(ref)
    params = [x, *blk.parameters()]
    for a, r in zip(torch.autograd.grad(out, params, grad), torch.autograd.grad(ref, params, grad)):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)
    assert set(blk.state_dict()) == {"dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight",
                                     "pwconv1.bias", "pwconv2.weight", "pwconv2.bias"} | (
        {"gamma"} if blk.gamma is not None else set()) | ({"grn.gamma", "grn.beta"} if kwargs.get("use_grn") else set())


def test_block_triton_path_bf16_autocast_and_bf16_weights(interpreter, monkeypatch):
    blk = _random_block(16, layer_scale_init_value=0.5).eval()
    x = torch.randn(2, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    calls = _count_kernels(monkeypatch)
    with torch.no_grad():
        ref = _textbook_block(blk, x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = blk(x)
        assert calls == ALL_THREE and mixed.dtype == torch.float32  # the residual stream stays fp32
        torch.testing.assert_close(mixed, ref, atol=5e-2, rtol=2e-2)
        half = blk.bfloat16()(x.bfloat16())
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ref, atol=1e-1, rtol=2e-2)  # every op in bf16, one more rounding


def test_block_drop_path_in_training_falls_back_to_a_separate_add(interpreter, monkeypatch):
    blk = _random_block(16, layer_scale_init_value=0.5, drop_path=0.5).train()
    x = torch.randn(4, 16, 3, 3).contiguous(memory_format=torch.channels_last)
    calls = _count_kernels(monkeypatch)
    torch.manual_seed(4)  # drops 2 of the 4 rows
    out = blk(x)
    assert calls == ALL_THREE[:2]  # pwconv2 unfused: drop path scales the branch alone
    torch.manual_seed(4)
    branch = blk.drop_path((blk.gamma * blk.pwconv2(F.gelu(blk.pwconv1(_textbook(blk, x))))).permute(0, 3, 1, 2))
    torch.testing.assert_close(out, x + branch, atol=1e-4, rtol=1e-5)
    dropped = (branch.flatten(1).abs().amax(1) == 0).sum().item()
    assert dropped == 2  # this seed drops some rows, not all: the check above sees both cases
    blk.eval()
    calls.clear()
    blk(x)
    assert calls == ALL_THREE  # in eval drop path is the identity: fully fused


def test_switch_off_takes_the_plain_path(interpreter, monkeypatch):
    blk = _random_block(16, layer_scale_init_value=0.5).eval()
    x = torch.randn(2, 16, 7, 7).contiguous(memory_format=torch.channels_last)
    calls = _count_kernels(monkeypatch)
    with torch.no_grad():
        fused = blk(x)
        assert calls == ALL_THREE
        monkeypatch.setenv("CONVNEXT_TRITON", "0")  # the one switch
        assert not use_triton(x, blk.dwconv, blk.norm)
        plain = blk(x)
    assert calls == ALL_THREE  # no kernel ran the second time
    torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-5)
