"""Self-describing, atomically written training checkpoints (STYLE.md principle 8).

Layout (format "convnext-train-v1"), every value a plain Python type or a tensor so that
`torch.load(path, weights_only=True)` reads it:

    format, model (canonical state dict), model_ema (if EMA), model_config, model_name, labels,
    train_config, epoch (completed epochs), batch_in_epoch (>0 only for a mid-epoch Ctrl-C save),
    step (optimizer steps), optimizer, scaler, rng {torch, numpy, python, cuda}, metrics
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError

__all__ = ["FORMAT", "save_checkpoint", "remove_stale_temporaries", "load_training_checkpoint", "unwrap_model", "rng_state", "set_rng_state"]

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


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it: set and restore at once
    os.umask(mask)
    return mask


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: a temporary file in the same folder, then os.replace.

    A crash mid-write leaves the previous checkpoint intact (and a `.NAME.*.tmp` file, removed by
    `remove_stale_temporaries` when the next run starts). The file gets the permissions any new
    file would get under the user's umask (mkstemp alone would make it 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the `.checkpoint-*.tmp` files a killed save left in `folder` (call with the run lock held)."""
    removed = []
    for tmp in Path(folder).glob(".checkpoint-*.tmp"):
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
