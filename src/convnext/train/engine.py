"""The training loop: one epoch of training, one pass of evaluation (STYLE.md principle 6).

Gradient accumulation, mixed precision, clipping and EMA are written out inline in
`train_one_epoch` rather than hidden behind callbacks.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from .distributed import all_reduce_sum

__all__ = ["ModelEMA", "NonFiniteLossError", "StepContext", "train_one_epoch", "Accuracy", "evaluate", "autocast"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or Inf: training stops and the last good checkpoint is kept."""


class ModelEMA:
    """Exponential moving average of a model's weights, updated after every optimizer step.

    ema = decay * ema + (1 - decay) * weights (buffers are copied). The EMA copy lives on the
    same device and is evaluated in place of the model when the paper's recipe says so.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_p = [p for p in self.module.parameters()]
        model_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, [p.to(e.dtype) for p, e in zip(model_p, ema_p)], 1.0 - self.decay)
        for e, b in zip(self.module.buffers(), model.buffers()):
            e.copy_(b)


def autocast(device: torch.device, amp: str):
    """torch.autocast for "bf16"/"fp16", a null context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


@dataclass
class StepContext:
    """Everything `train_one_epoch` needs besides the model and the data."""

    optimizer: torch.optim.Optimizer
    loss: Callable[[nn.Module, object, object, torch.device], torch.Tensor]  # task.loss: one micro-batch
    lr_at: Callable[[int], float]  # optimizer step -> lr (each param group multiplies it by its lr_scale)
    device: torch.device
    amp: str = "off"
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    accum_steps: int = 1
    step_on_last_batch: bool = False  # the epoch's last batch ends an accumulation window (no drop_last)
    clip_grad: float | None = None
    ema: ModelEMA | None = None
    unwrapped: nn.Module | None = None  # the model under DDP, for the EMA update
    on_step: Callable[[dict], None] | None = None  # called after every optimizer step with its stats
    # A context manager around each optimizer step, its EMA update and `on_step`: the trainer defers
    # Ctrl-C / SIGTERM there, so an interrupt never lands between two parameter updates of one step.
    critical: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext


def _optimizer_step(model: nn.Module, ctx: StepContext, step: int, loss: float, images_per_sec: float) -> int:
    """lr of this step, clipping, the (scaled) optimizer step, EMA; returns the new step count."""
    opt = ctx.optimizer
    lr = ctx.lr_at(step)
    for group in opt.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    grad_norm = None
    if ctx.clip_grad is not None:
        if ctx.scaler is not None:
            ctx.scaler.unscale_(opt)  # clip the true gradients, not the scaled ones
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), ctx.clip_grad).item()
    if ctx.scaler is not None:
        ctx.scaler.step(opt)  # skipped when the scaled gradients overflowed
        ctx.scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    if ctx.ema is not None:
        ctx.ema.update(ctx.unwrapped if ctx.unwrapped is not None else model)
    step += 1
    if ctx.on_step is not None:
        ctx.on_step({"step": step, "loss": loss, "lr": lr, "grad_norm": grad_norm, "images_per_sec": images_per_sec})
    return step


def train_one_epoch(model: nn.Module, batches: Iterable, ctx: StepContext, step: int) -> dict:
    """Train on `batches` (already positioned at the first batch to run); return epoch stats.

    Args:
        model: the (possibly DDP-wrapped) model, in train mode.
        batches: yields (inputs, targets, num_skipped_images); inputs is a tensor or a list of images.
        ctx: optimizer, loss, schedule, precision and EMA settings.
        step: optimizer steps taken before this epoch (indexes the lr schedule).
    """
    model.train()
    opt = ctx.optimizer
    loss_sum, n_images, n_skipped, micro = 0.0, 0, 0, 0
    n_batches = len(batches) if ctx.step_on_last_batch else -1
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    for i, (inputs, targets, skipped) in enumerate(batches):
        n_skipped += skipped
        batch_size = len(inputs)
        if batch_size == 0:
            continue

        micro += 1
        last_micro = micro % ctx.accum_steps == 0 or i + 1 == n_batches
        # Under DDP, gradients are all-reduced only on the micro-step that ends the accumulation window
        # (FSDP has no no_sync: it reduce-scatters on every micro-step, which is correct, just slower).
        sync = contextlib.nullcontext() if last_micro or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast(ctx.device, ctx.amp):
                loss = ctx.loss(model, inputs, targets, ctx.device)
            # Every rank must agree to stop, or the others would wait forever in the gradient all-reduce.
            if all_reduce_sum([0.0 if math.isfinite(loss.item()) else 1.0], ctx.device)[0] > 0:
                raise NonFiniteLossError(f"loss is {loss.item()} at optimizer step {step}")
            scaled = loss / ctx.accum_steps  # mean over the whole effective batch
            (ctx.scaler.scale(scaled) if ctx.scaler is not None else scaled).backward()
        loss_sum += loss.item() * batch_size
        n_images += batch_size
        if not last_micro:
            continue

        with ctx.critical():
            step = _optimizer_step(model, ctx, step, loss.item(), n_images / max(time.perf_counter() - t0, 1e-9))
        micro = 0

    elapsed = time.perf_counter() - t0
    loss_total, images_total, skipped_total = all_reduce_sum([loss_sum, n_images, n_skipped], ctx.device)
    return {
        "loss": loss_total / max(images_total, 1),
        "images": int(images_total),
        "skipped_images": int(skipped_total),
        "images_per_sec": images_total / max(elapsed, 1e-9),
        "seconds": elapsed,
        "step": step,
    }


class Accuracy:
    """Classification evaluator: top-1 / top-5 accuracy (percent) and cross-entropy, summed across ranks.

    The evaluator protocol of `evaluate`: `predict(model, inputs, device)` runs the model (under
    autocast; an evaluator with `predict_takes_targets = True` gets the batch's targets as a 4th
    argument, e.g. detection for the original image sizes), `update(outputs, targets)` accumulates,
    `summarize()` returns the metrics. Detection and segmentation bring their own
    (`convnext.dense.tasks`); the loop around them is the same.
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes  # <= 5 classes: top-5 is always 100%, reported as None
        self.device = torch.device("cpu")
        self.correct1 = self.correct5 = self.loss_sum = self.n = 0.0

    def predict(self, model: nn.Module, images: torch.Tensor, device: torch.device) -> torch.Tensor:
        self.device = device
        return model(images.to(device, non_blocking=True))

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits, targets = logits.float(), targets.to(logits.device, non_blocking=True)
        self.loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices  # (B, k)
        hit = top == targets[:, None]
        self.correct1 += hit[:, 0].sum().item()
        self.correct5 += hit.any(dim=1).sum().item()
        self.n += targets.shape[0]

    def summarize(self) -> dict:
        c1, c5, loss, n = all_reduce_sum([self.correct1, self.correct5, self.loss_sum, self.n], self.device)
        top5 = 100.0 * c5 / max(n, 1)
        return {"top1": 100.0 * c1 / max(n, 1), "top5": None if (self.num_classes or 6) <= 5 else top5,
                "loss": loss / max(n, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable, device: torch.device, amp: str = "off", evaluator=None,
             progress: bool = False) -> dict:
    """The one evaluation loop of every task: the evaluator's metrics plus image counts, summed across ranks.

    Args:
        model: the model (put in eval mode here).
        batches: yields (inputs, targets, num_skipped_images), as the training batches.
        device: where the model runs.
        amp: "bf16" | "fp16" | "off" (autocast of the forward pass).
        evaluator: `predict` / `update` / `summarize` (default `Accuracy()`: top-1, top-5, loss).
        progress: a tqdm bar on stderr.
    """
    evaluator = Accuracy() if evaluator is None else evaluator
    if isinstance(evaluator, Accuracy):
        evaluator.device = device  # its sums are all-reduced there, also by a rank that got no batch
    model.eval()
    n = skipped = 0
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=len(batches) if hasattr(batches, "__len__") else None, desc="evaluate", unit="batch",
                   leave=False, file=sys.stderr, dynamic_ncols=True)
    for inputs, targets, bad in batches:
        skipped += bad
        if len(inputs) > 0:
            with autocast(device, amp):
                if getattr(evaluator, "predict_takes_targets", False):  # detection: original image sizes
                    outputs = evaluator.predict(model, inputs, device, targets)
                else:
                    outputs = evaluator.predict(model, inputs, device)
            evaluator.update(outputs, targets)
            n += len(inputs)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    n, skipped = all_reduce_sum([n, skipped], device)
    return {**evaluator.summarize(), "images": int(n), "skipped_images": int(skipped)}
