"""torch.compile friendliness of the Block: residual layout under inductor, no graph breaks.

Inductor's CPU backend writes a transposing copy (`transpose_mxn<float...>`) whenever an fp32 buffer
is stored in a different order than it is read. A residual stream materialised in the logical
(B, H, W, C) shape gets channels-last strides *for that shape* (H innermost) under inductor's layout
optimisation, so every block wrote and read it transposed; the Block now adds on (B, C, H, W).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convnext.models import create_model
from convnext.models.fast import layer_scaled_linear, linear_gelu
from convnext.models.layers import Block, LayerNorm2d

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _PermutedLayerNorm2d(LayerNorm2d):
    """The former formulation: F.layer_norm on the (B, H, W, C) view, in compiled code too."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps).permute(
            0, 3, 1, 2
        )


class _NHWCAddBlock(Block):
    """The former formulation: residual added on the (B, H, W, C) view, permuted back afterwards."""

    def forward(self, x):
        shortcut = x.permute(0, 2, 3, 1)  # (B, H, W, C)
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = linear_gelu(self.norm(x), self.pwconv1)
        return layer_scaled_linear(x, self.pwconv2, self.gamma, residual=shortcut).permute(0, 3, 1, 2)


def _stage(block_cls, norm_cls) -> nn.Module:
    # stem -> LN -> blocks -> downsample: the downsample's LN and conv make inductor materialise
    # the fp32 residual stream (under bf16 autocast the LN output is fp32).
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 2, 2), norm_cls(16), *(block_cls(16, layer_scale_init_value=0.5) for _ in range(3)),
        norm_cls(16), nn.Conv2d(16, 32, 2, 2),
    ).eval()


def _compiled_bf16(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(eager output, compiled output, number of fp32 transposing copies in inductor's CPU code)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    x = torch.randn(1, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, codes = run_and_get_code(torch.compile(model), x)
        ref = model(x)
    return ref, out, "\n".join(codes).count("transpose_mxn<float")


def test_compiled_blocks_store_the_residual_untransposed():
    # Both the residual add and the LayerNorm2d run on (B, C, H, W) under compile.
    ref, out, transposes = _compiled_bf16(_stage(Block, LayerNorm2d))
    assert transposes == 0
    torch.testing.assert_close(out.float(), ref.float(), atol=0.05, rtol=0.05)  # bf16 GEMMs


@pytest.mark.slow
def test_transpose_counter_sees_the_nhwc_residual():
    # The counter above can fail: the former (B, H, W, C) formulation produces transposing copies.
    assert _compiled_bf16(_stage(_NHWCAddBlock, _PermutedLayerNorm2d))[2] > 0


@pytest.mark.parametrize("dtype, autocast", [(torch.float32, False), (torch.bfloat16, False), (torch.float32, True)])
def test_layernorm2d_compile_formulation_matches_eager(dtype, autocast):
    torch.manual_seed(0)
    norm = LayerNorm2d(8).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-0.5, 0.5)
    x = (3 * torch.randn(2, 8, 5, 6) + 1).to(dtype).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        ref, out = norm(x), norm._channels_first(x)
    assert out.dtype == ref.dtype and out.shape == ref.shape == x.shape
    tol = 1e-5 if ref.dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)


@pytest.mark.slow
def test_compiled_model_matches_eager():
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=10, layer_scale_init_value=0.5).eval()
    x = torch.randn(1, 3, 32, 32)
    torch._dynamo.reset()
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model)(x), model(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("train", [False, True])
def test_fullgraph_under_bf16_autocast_without_tracing_the_autocast_probe(monkeypatch, train):
    # Older PyTorch versions cannot trace `torch._C._is_autocast_available` (graph break + warning).
    # Emulate them: a dynamo-disabled probe breaks the graph if it is reached while compiling.
    monkeypatch.setattr(torch.amp, "is_autocast_available", torch._dynamo.disable(torch.amp.is_autocast_available))
    model = create_model("convnext_atto", num_classes=10, drop_path_rate=0.1).train(train)
    x = torch.randn(2, 3, 32, 32)
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1
    torch._dynamo.reset()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # dynamo tracing only: fast, and raises on a break
        out = torch.compile(model, fullgraph=True, backend="eager")(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
