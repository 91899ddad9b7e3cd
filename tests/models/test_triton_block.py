"""The Triton dwconv 7x7 + LayerNorm kernel, run by Triton's CPU interpreter (no GPU needed).

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

from convnext.models.layers import Block
from convnext.models.triton_block import dwconv_layernorm, triton_available, use_triton

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"


@pytest.fixture
def interpreter(monkeypatch):
    if not INTERPRETED:
        pytest.skip("runs in the child process of test_kernels_under_the_interpreter")
    monkeypatch.setenv("CONVNEXT_TRITON", "1")


@pytest.mark.skipif(INTERPRETED, reason="this is the child process")
def test_kernels_under_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", CONVNEXT_TRITON="1")
    run = subprocess.run([sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-x", "-p", "no:cacheprovider"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "6 passed" in run.stdout  # every interpreter test ran (none skipped)


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


def test_block_uses_the_kernel_and_keeps_its_output(interpreter, monkeypatch):
    from convnext.models import triton_block

    calls = []
    apply = triton_block._DwConvLayerNorm.apply
    monkeypatch.setattr(triton_block._DwConvLayerNorm, "apply", lambda *a: calls.append(1) or apply(*a))
    blk = _block(8).eval()
    x = torch.randn(2, 8, 6, 6).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        fused = blk(x)
        assert calls == [1]
        monkeypatch.setenv("CONVNEXT_TRITON", "0")  # the one switch
        assert not use_triton(x, blk.dwconv, blk.norm)
        plain = blk(x)
        assert calls == [1]
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    assert set(blk.state_dict()) == {"dwconv.weight", "dwconv.bias", "norm.weight", "norm.bias", "pwconv1.weight",
                                     "pwconv1.bias", "pwconv2.weight", "pwconv2.bias", "gamma"}


def test_not_selected_on_cpu_without_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("CONVNEXT_TRITON", raising=False)
    blk = _block(8)
    assert not use_triton(torch.randn(1, 8, 4, 4), blk.dwconv, blk.norm)
