"""Helpers for parity tests and benchmarks against peer implementations (public, torch only).

`randomise_(model, seed)` overwrites every floating-point tensor of a state dict, parameters and
buffers alike, so that a tensor mapped to the wrong place, a norm whose affine part is ignored
or a BatchNorm whose running statistics are dropped shows in the outputs. Freshly initialised
models hide such errors: LayerNorm weights are all ones, biases and BatchNorm means zero, layer
scales 1e-6 (every block then passes its input through almost unchanged).
"""
from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["randomise_"]

_LAYER_SCALE = ("gamma", "layer_scale_parameter", "layer_scale")  # ours / official, HF, mmpretrain


@torch.no_grad()
def randomise_(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every floating tensor of `model.state_dict()` drawn anew from a generator seeded with `seed`.

    Drawn in state-dict order, so two models with the same tensors in the same order get the same
    values whatever their names. BatchNorm variance ~U(0.5, 1.5), mean ~N(0, 0.2^2); layer scale
    ~U(0.5, 1) (every block matters); 1-D weights (norm scales) ~N(1, 0.2^2), other 1-D tensors
    (biases) ~N(0, 0.1^2); conv and linear weights ~N(0, 1/fan_in), so activations keep unit
    scale through the depth. Integer buffers (num_batches_tracked) are left alone. Returns `model`.
    """
    g = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue
        r = torch.randn(t.shape, generator=g)
        if "running_var" in name:
            value = 0.5 + torch.rand(t.shape, generator=g)
        elif "running_mean" in name:
            value = 0.2 * r
        elif name.rsplit(".", 1)[-1] in _LAYER_SCALE:
            value = 0.5 + 0.5 * torch.rand(t.shape, generator=g)
        elif t.ndim == 1 and name.endswith("weight"):
            value = 1 + 0.2 * r
        elif t.ndim <= 1:
            value = 0.1 * r
        else:
            value = r / math.sqrt(t[0].numel())
        t.copy_(value)
    return model
