"""Self-describing, atomically written training checkpoints (STYLE.md principle 8).

Layout (format "convnext-train-v1"), every value a plain Python type or a tensor so that
`torch.load(path, weights_only=True)` reads it:

    format, model (canonical state dict), model_ema (if EMA), reported_weights ("model" | "ema"),
    model_config, model_name, task, labels, train_config, requested_config (before adaptation),
    epoch (completed epochs), batch_in_epoch (>0 only for an interrupted epoch), step (optimizer
    steps), optimizer, scaler, rng {torch, numpy, python, cuda}, metrics, and pending_record (only
    when an interrupt or a bad file stopped the epoch-end evaluation: the resumed run evaluates first)

checkpoint-last.pt holds all of it (resume); checkpoint-best.pt only the weights and what describes
them (`best_state`: no optimizer, scaler or RNG state), a third of the size under AdamW.
"""
from __future__ import annotations

import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["FORMAT", "Position", "training_state", "best_state", "save_checkpoint", "write_atomic",
           "remove_stale_temporaries", "load_training_checkpoint", "unwrap_model", "rng_state", "set_rng_state",
           "buffers_of"]

FORMAT = "convnext-train-v1"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state() -> dict:
    """All RNG states as tensors / lists (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))


@dataclass
class Position:
    """Where a run stands at an optimizer-step boundary: what a checkpoint resumes from.

    An interrupt anywhere inside a batch saves the last boundary, so the resumed run replays the
    unfinished batch (and accumulation window) with the random numbers and BatchNorm statistics it
    started with: the partial forward of the interrupted batch leaves no trace.
    """

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches of the current epoch trained (>0 only for an interrupted epoch)
    step: int = 0  # optimizer steps taken
    rng: dict | None = None  # every RNG state at this boundary (`rng_state`)
    buffers: dict | None = None  # the model's buffers at this boundary (BatchNorm running stats, counters)
    pending_record: dict | None = None  # the finished epoch whose evaluation is still to run


def buffers_of(model: nn.Module) -> dict:
    """Copies of the model's buffers (small: BatchNorm statistics and counters), by state-dict name."""
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def training_state(model_sd: dict, optim_sd: dict, *, meta: dict, pos: Position, metrics: dict,
                   ema_sd: dict | None = None, scaler_sd: dict | None = None) -> dict:
    """The checkpoint content: the weights with the buffers of `pos`, the optimizer, RNG and position.

    `meta` describes the run (model_config, model_name, task, labels, train_config, requested_config,
    reported_weights) and is the same for every save.
    """
    if pos.buffers:
        model_sd = {**model_sd, **{k: v for k, v in pos.buffers.items() if k in model_sd}}
    state = {
        "model": model_sd,
        **({"model_ema": ema_sd} if ema_sd is not None else {}),
        **meta,
        "epoch": pos.epoch,
        "batch_in_epoch": pos.batch_in_epoch,
        "step": pos.step,
        "optimizer": optim_sd,
        "scaler": scaler_sd or {},
        "rng": pos.rng if pos.rng is not None else rng_state(),
        "metrics": metrics,
    }
    if pos.pending_record is not None:
        state["pending_record"] = pos.pending_record
    return state


def best_state(state: dict) -> dict:
    """What checkpoint-best.pt keeps of a training state: the weights and their description (not resumable)."""
    return {k: v for k, v in state.items() if k not in ("optimizer", "scaler", "rng", "pending_record")}


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def write_atomic(path: str | Path, write: Callable[[Any], None]) -> None:
    """Call `write(binary file)` on a temporary file in `path`'s folder, fsync, then os.replace it onto `path`.

    A crash mid-write leaves the previous file intact (and a `.NAME.*.tmp` file, removed by
    `remove_stale_temporaries` when the next run starts). The file gets the permissions any new file
    would get under the user's umask (mkstemp alone would make it 0600). A write that fails (a full
    disk, a read-only folder) is one CheckpointError naming the file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        Path(tmp).unlink(missing_ok=True)
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).strip().splitlines()[0]
        raise CheckpointError(f"cannot write {path}: {reason} (is the disk full?); the files already in "
                              f"{path.parent} are intact") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` (plus the format tag) to `path` atomically (`write_atomic`)."""
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed save left in `folder` (call with the run lock held)."""
    removed = []
    folder = Path(folder)
    for tmp in [*folder.glob(".checkpoint-*.tmp"), *folder.glob(".metrics.json.*.tmp")]:
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_training_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint written by `save_checkpoint` (safe: the weights library's weights-only reader)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"--resume {path}: no such checkpoint file")
    from ..weights.io import read_checkpoint

    ckpt = read_checkpoint(path)  # weights-only / safetensors; a CheckpointError (ValueError) says why not
    if ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a `convnext train` checkpoint (expected format {FORMAT!r}); "
            "use --finetune to start from other weights"
        )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: training checkpoint lacks {', '.join(missing)}; it cannot be resumed "
                              "(use it with --finetune to start a new run from its weights)")
    return ckpt


# What resuming needs; other keys (model_ema, scaler, batch_in_epoch...) are optional.
_REQUIRED = ("model", "model_config", "model_name", "train_config", "epoch", "step", "optimizer", "rng", "metrics")
