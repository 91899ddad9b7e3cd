"""Learning-rate schedule of the paper's recipe as pure functions of the optimizer step (PAPER.md §3.3).

Linear warm-up from 0 to the peak, then half-cosine down to `min_lr`, evaluated at every
optimizer step (not per epoch). Iterations per epoch = floor(N / batch): the incomplete batch
is dropped, as in the official code.
"""
from __future__ import annotations

import math

__all__ = ["scaled_lr", "steps_per_epoch", "lr_at_step"]


def scaled_lr(base_lr: float, effective_batch: int, base_batch: int = 4096) -> float:
    """Linear scaling rule: `base_lr` is the peak lr at an effective batch of `base_batch`."""
    return base_lr * effective_batch / base_batch


def steps_per_epoch(num_batches: int, accum_steps: int) -> int:
    """Optimizer steps per epoch; a trailing partial accumulation window is dropped."""
    return num_batches // accum_steps


def lr_at_step(step: int, *, peak_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for optimizer step `step` (0-based) of `total_steps`.

    Warm-up: peak * step / warmup_steps (so step 0 trains with lr 0, as the official schedule).
    Cosine: min + (peak - min) * (1 + cos(pi * t)) / 2, t going from 0 to 1 over the remaining steps.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    t = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))
