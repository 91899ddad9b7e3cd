"""Multiply-accumulate counting, the convention of the paper's "FLOPs" (PAPER.md §0).

Counts conv and linear (matmul) MACs only, via torch's own `FlopCounterMode`, which reports
2 FLOPs per MAC. The model runs on meta tensors, so even ConvNeXt-XL at 384 costs no compute.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_params"]


def count_flops(model: nn.Module, img_size: int | tuple[int, int] = 224, batch_size: int = 1) -> int:
    """Multiply-accumulates of one forward pass at `img_size` (int or (H, W)), as an int."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    in_chans = getattr(model, "in_chans", 3)
    meta = {k: torch.empty_like(v, device="meta") for k, v in model.state_dict(keep_vars=True).items()}
    x = torch.empty(batch_size, in_chans, h, w, device="meta")
    target = model
    if hasattr(model, "forward_dummy"):  # dense models count their own protocol (detectors: mmdet's forward_dummy)
        target, meta = _DummyForward(model), {f"model.{k}": v for k, v in meta.items()}
    was_training = model.training
    model.eval()
    try:
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            functional_call(target, meta, (x,), strict=False)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


class _DummyForward(nn.Module):
    """Calls `model.forward_dummy` as its forward, so `functional_call` can run it on meta tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_dummy(x)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
