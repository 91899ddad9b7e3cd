"""Inference-time rewrites that go beyond the default forward (deployment only).

`optimize_for_inference(model)` folds each block's layer scale into its `pwconv2` once, instead of
on every call (the default forward already computes x (gamma W)^T + gamma b, see `fast.py`, but
re-multiplies the weight each time because `gamma` may be training). Afterwards the block's
`gamma` is None, so the state dict no longer has the official `gamma` keys: save checkpoints
from the original model, not from an optimised one.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import Block

__all__ = ["optimize_for_inference", "fold_layer_scale"]


@torch.no_grad()
def fold_layer_scale(block: Block) -> None:
    """pwconv2 <- gamma * pwconv2 (weight rows and bias), then drop gamma; same outputs in fp32."""
    if block.gamma is None:
        return
    gamma = block.gamma.detach()
    block.pwconv2.weight.mul_(gamma[:, None])
    if block.pwconv2.bias is not None:
        block.pwconv2.bias.mul_(gamma)
    block.gamma = None


def optimize_for_inference(model: nn.Module) -> nn.Module:
    """Prepare a ConvNeXt for fast fp32 inference, in place; returns the same module.

    Switches to eval mode, freezes the parameters (no autograd bookkeeping, which also lets the
    CPU forward use the oneDNN-fused Linears of `fast.py` without a `torch.no_grad()` block) and
    folds every block's layer scale into its pwconv2. Folding happens in the parameters' own
    dtype: fold an fp32 model, and cast to half precision afterwards if needed (a folded weight
    gamma * W is as small as the product, so check fp16 ranges for models with tiny gammas).
    """
    model.eval()
    model.requires_grad_(False)
    for module in model.modules():
        if isinstance(module, Block):
            fold_layer_scale(module)
    return model
