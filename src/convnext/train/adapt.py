"""Adapt recipe values that cannot make sense for the run at hand, and say so.

The defaults are the paper's ImageNet-1K recipe (300 epochs of 1.28M images at batch 4096). On a
user's folder of a few hundred images for 2 epochs, some of them silently break the run: 20
warm-up epochs never finish, an EMA of decay 0.9999 (a horizon of 10,000 steps) never moves from
its initial weights, a batch of 128 leaves one step per epoch and drops the rest of the images,
and 4 loader workers plus torch's one thread per core oversubscribe a 2-core machine (measured:
benchmarks/threads.py and docs/benchmarks.md, "Thread defaults"). `adapt_config` changes
only such values, only when the user did not set them, and returns one line per change; the
trainer prints the lines and records them in config.yaml. At ImageNet scale nothing triggers but
the thread count, so the named recipes run as written. `--no-adapt` turns it off.
"""
from __future__ import annotations

import os

from .config import TrainConfig, replace_config

__all__ = ["adapt_config", "available_cpus", "MIN_STEPS_PER_EPOCH"]

MIN_STEPS_PER_EPOCH = 10  # below this a per-step schedule (warm-up, cosine) has nothing to work with
WARMUP_MAX_FRACTION = 0.25  # a warm-up longer than this part of the run is shortened ...
WARMUP_ADAPTED_FRACTION = 0.1  # ... to this part (the paper warms up for 20 of 300 epochs, 6.7%)
TAIL_KEEP_FRACTION = 0.01  # keep the short last batch when dropping it would leave out more than this


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def adapt_config(
    config: TrainConfig,
    *,
    num_train: int,
    world_size: int = 1,
    local_world_size: int = 1,
    explicit: frozenset[str] | set[str] = frozenset(),
    cpus: int | None = None,
) -> tuple[TrainConfig, list[str]]:
    """(adapted config, one line per change). `explicit`: the fields to keep as they are (the user's)."""
    if not config.adapt:
        return config, []
    changes: dict = {}
    notes: list[str] = []

    # Loader workers: more than the CPUs this process may use only adds contention (torch warns too).
    cpus = available_cpus() if cpus is None else cpus
    per_process = max(cpus // max(local_world_size, 1), 1)
    if config.num_workers > per_process:
        changes["num_workers"] = per_process
        notes.append(f"num_workers {config.num_workers} -> {per_process}: {cpus} CPU(s) available"
                     + (f" for {local_world_size} processes" if local_world_size > 1 else ""))

    # Batch size: at least MIN_STEPS_PER_EPOCH optimizer steps per epoch.
    mix = config.mixup > 0 or config.cutmix > 0
    per_step = world_size * config.accum_steps
    batch = config.batch_size
    if "batch_size" not in explicit and num_train // (batch * per_step) < MIN_STEPS_PER_EPOCH:
        # At least 2 images: BatchNorm (dense heads, roadmap ResNets) and Mixup pairs need them.
        new = max(num_train // (MIN_STEPS_PER_EPOCH * per_step), 2)
        if mix:
            new -= new % 2  # Mixup/CutMix pair images
        new = min(new, batch)
        if new != batch:
            batch = changes["batch_size"] = new
            lr_note = "" if config.lr is not None else " (the peak lr scales with it)"
            notes.append(f"batch_size {config.batch_size} -> {new}: {num_train} training images would give "
                         f"{num_train // (config.batch_size * per_step)} step(s) per epoch{lr_note}")

    # The short last batch: keep it rather than leave out a noticeable part of a small data set.
    tail = num_train % (batch * world_size)
    if config.drop_last and "drop_last" not in explicit and tail > TAIL_KEEP_FRACTION * num_train:
        changes["drop_last"] = False
        notes.append(f"drop_last -> false: the last {tail} of {num_train} images would be left out every epoch; "
                     "they are trained on as a short last batch")

    # Warm-up longer than a quarter of the run: the lr would barely reach its peak before decaying.
    if ("warmup_epochs" not in explicit and config.warmup_steps is None
            and config.warmup_epochs > WARMUP_MAX_FRACTION * config.epochs):
        new = round(WARMUP_ADAPTED_FRACTION * config.epochs, 3)
        changes["warmup_epochs"] = new
        notes.append(f"warmup_epochs {config.warmup_epochs:g} -> {new:g}: the run has {config.epochs} epoch(s)")

    steps = config.epochs * max(-(-num_train // (batch * per_step)), 1)  # optimizer steps of the whole run
    if (config.warmup_steps is not None and "warmup_steps" not in explicit
            and config.warmup_steps > WARMUP_MAX_FRACTION * steps):
        new = round(WARMUP_ADAPTED_FRACTION * steps)
        changes["warmup_steps"] = new
        notes.append(f"warmup_steps {config.warmup_steps} -> {new}: the run has about {steps} steps")

    # EMA whose horizon (1 / (1 - decay) steps) exceeds the run: it would report nearly initial weights.
    if config.ema and "ema" not in explicit and "ema_decay" not in explicit:
        horizon = 1.0 / max(1.0 - config.ema_decay, 1e-12)
        if steps < horizon:
            changes["ema"] = False
            notes.append(f"ema -> off: decay {config.ema_decay:g} averages over ~{horizon:.0f} steps, the run has "
                         f"about {steps} (pass --ema to keep it)")

    # Torch threads: the CPUs the loader workers leave (both at full speed oversubscribe the cores).
    if config.threads is None and "threads" not in explicit:
        workers = changes.get("num_workers", config.num_workers)
        threads = max(1, per_process - workers) if workers > 0 else per_process
        changes["threads"] = threads
        if threads != cpus:
            notes.append(f"threads -> {threads}: {cpus} CPU(s)"
                         + (f" for {local_world_size} processes" if local_world_size > 1 else "")
                         + (f", {workers} of them for the loader workers" if workers > 0 else ""))

    return (replace_config(config, **changes) if changes else config), notes
