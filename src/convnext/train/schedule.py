"""Learning-rate schedule of the paper's recipe as pure functions of the optimizer step (PAPER.md §3.3).

Linear warm-up from 0 to the peak, then half-cosine down to `min_lr`, evaluated at every
optimizer step (not per epoch). Iterations per epoch = floor(N / batch): the incomplete batch
is dropped, as in the official code.
"""
from __future__ import annotations

import functools
import math

from ..errors import ConfigError

__all__ = ["scaled_lr", "steps_per_epoch", "lr_at_step", "lr_step_schedule", "lr_poly", "make_schedule", "SCHEDULES",
           "warmup_steps_of"]


def scaled_lr(base_lr: float, effective_batch: int, base_batch: int = 4096) -> float:
    """Linear scaling rule: `base_lr` is the peak lr at an effective batch of `base_batch`."""
    return base_lr * effective_batch / base_batch


def steps_per_epoch(num_batches: int, accum_steps: int, drop_last: bool = True) -> int:
    """Optimizer steps per epoch; a trailing partial accumulation window is dropped with `drop_last`
    (the official recipe), otherwise it makes one last, shorter step."""
    return num_batches // accum_steps if drop_last else -(-num_batches // accum_steps)


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


def lr_step_schedule(step: int, *, peak_lr: float, milestones: list[int], gamma: float = 0.1, warmup_steps: int = 0,
                     warmup_ratio: float = 0.001) -> float:
    """mmdet's step schedule: linear warm-up from `warmup_ratio` x peak, then x`gamma` at each
    milestone (optimizer steps; the 3x detection schedule: epochs 27 and 33 of 36)."""
    lr = peak_lr * gamma ** sum(step >= m for m in milestones)
    if step < warmup_steps:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return lr


def lr_poly(step: int, *, peak_lr: float, total_steps: int, power: float = 1.0, min_lr: float = 0.0,
            warmup_steps: int = 0, warmup_ratio: float = 1e-6) -> float:
    """mmseg's poly schedule (power 1, min 0 for UperNet) with linear warm-up from `warmup_ratio` x peak."""
    t = min(step / max(total_steps, 1), 1.0)
    lr = (peak_lr - min_lr) * (1.0 - t) ** power + min_lr
    if step < warmup_steps:
        lr *= warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return lr


def _cosine(config, peak_lr: float, warmup: int, total: int):
    return functools.partial(lr_at_step, peak_lr=peak_lr, min_lr=config.min_lr, warmup_steps=warmup, total_steps=total)


def _step(config, peak_lr: float, warmup: int, total: int):
    milestones = [round(f * total) for f in config.lr_milestones]
    return functools.partial(lr_step_schedule, peak_lr=peak_lr, milestones=milestones, warmup_steps=warmup,
                             warmup_ratio=config.warmup_ratio)


def _poly(config, peak_lr: float, warmup: int, total: int):
    return functools.partial(lr_poly, peak_lr=peak_lr, total_steps=total, min_lr=config.min_lr, warmup_steps=warmup,
                             warmup_ratio=config.warmup_ratio)


# The implementation of each `--schedule` choice (the choices and their help: `config.CHOICES["schedule"]`).
SCHEDULES = {"cosine": _cosine, "step": _step, "poly": _poly}


def warmup_steps_of(config, steps_per_epoch: int) -> int:
    """The warm-up in optimizer steps as configured (`warmup_steps`, else `warmup_epochs` x steps per epoch)."""
    if config.warmup_steps is not None:
        return config.warmup_steps
    return round(config.warmup_epochs * steps_per_epoch)


def make_schedule(config, *, peak_lr: float, steps_per_epoch: int):
    """(step -> lr, warm-up steps) for the config's `schedule` (cosine | step | poly).

    A warm-up longer than the run is cut to the run (`adapt.py` shortens it earlier, and says so, unless
    the user set it); an unknown schedule name is a ConfigError naming the choices.
    """
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {config.schedule!r}")
    total = config.epochs * steps_per_epoch
    warmup = min(warmup_steps_of(config, steps_per_epoch), total)
    return SCHEDULES[config.schedule](config, peak_lr, warmup, total), warmup
