"""The run folder: refuse to clobber a finished or running run, and lock it while training.

A run folder holds config.yaml, checkpoint-{last,best}.pt, metrics.json, curves.png and
tensorboard/. Starting a new run into a folder that already holds one would overwrite its best
checkpoint, so that needs `--resume auto` (continue it) or `--overwrite` (start afresh).

The lock is an advisory `fcntl.flock` on `OUT/.lock`: the kernel drops it when the process dies,
however it dies (kill -9 included), so a lock left by a crashed run is never mistaken for a live
one. The file itself holds the owner's pid and host, only to name it in the error message.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from ..errors import ConfigError, UserError

__all__ = ["RUN_FILES", "RESULT_FILES", "holds_run", "check_run_folder", "clear_run", "clear_leftovers", "RunLock"]

# What `convnext train` writes; the result files mark a folder as holding a run. The others alone
# (config.yaml, tensorboard/: a run stopped before its first save) hold nothing to lose.
RUN_FILES = ("config.yaml", "checkpoint-last.pt", "checkpoint-best.pt", "metrics.json", "curves.png", "tensorboard")
RESULT_FILES = ("checkpoint-last.pt", "checkpoint-best.pt", "metrics.json")


def holds_run(out: Path) -> bool:
    return out.is_dir() and any((out / name).exists() for name in RESULT_FILES)


def check_run_folder(out: Path, *, resuming: bool, overwrite: bool) -> None:
    """Raise a ConfigError unless `out` can receive this run (one line saying what to do instead)."""
    existing = next(p for p in (out, *out.parents) if p.exists())  # the folder, or its nearest ancestor
    if not existing.is_dir():
        where = "is a file, not a folder" if existing == out else f"lies under {existing}, which is a file"
        raise ConfigError(f"--output {out}: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--output {out}: {existing} is not writable")
    if resuming or overwrite or not holds_run(out):
        return
    raise ConfigError(
        f"--output {out} already holds a run (checkpoints, metrics); continue it with --resume auto, "
        "choose another --output, or pass --overwrite to replace it"
    )


def clear_run(out: Path) -> list[str]:
    """Delete the files of a previous run in `out` (for --overwrite); returns what was removed."""
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def clear_leftovers(out: Path) -> list[str]:
    """Delete what a run that saved no checkpoint left (config.yaml, tensorboard/...); nothing if it saved one."""
    return [] if holds_run(out) else clear_run(out)


class RunLock:
    """Exclusive lock of a run folder for the lifetime of a training run (rank 0 only).

    Usage: `with RunLock(out): ...`. A second run on the same folder fails at once with a message
    naming the process that holds it; a lock whose owner died is free again automatically.
    """

    def __init__(self, folder: Path):
        self.path = Path(folder) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                owner = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            finally:
                os.close(fd)
            raise UserError(
                f"--output {self.path.parent} is in use by a running training ({owner}); "
                "wait for it to finish or choose another --output"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
