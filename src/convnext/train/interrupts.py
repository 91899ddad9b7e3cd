"""Ctrl-C and SIGTERM take one path: save where the run stands, then stop (resume: `--resume auto`).

`kill`, `timeout` and a scheduler's preemption send SIGTERM; inside `Interrupts` it raises
KeyboardInterrupt like Ctrl-C, so the trainer's one interrupt path saves for both. While a checkpoint
is written (`deferred()`), both signals wait until the atomic write has finished: an interrupt never
leaves a traceback from inside `torch.save`, and never splits checkpoint-last.pt from the files written
with it. Handlers are installed from the main thread only (elsewhere signals cannot be caught).
"""
from __future__ import annotations

import contextlib
import signal
import threading

__all__ = ["Interrupts"]


class Interrupts:
    """`with Interrupts() as interrupts:` SIGINT/SIGTERM raise KeyboardInterrupt, except inside
    `with interrupts.deferred():`, which raises it once the block is done."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received: str | None = None  # name of the last signal seen ("SIGTERM")
        self._depth = 0
        self._pending = False
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name
        if self._depth:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self, raise_pending: bool = True):
        """A block that signals do not interrupt; a signal received inside is raised at its end
        (with `raise_pending=False` it is only recorded in `received`: the block was the last work).

        DataLoader's SIGCHLD handler is held off too: after a SIGTERM to the process group, the
        workers' deaths must not raise inside the checkpoint write that saves the run.
        """
        sigchld = getattr(signal, "SIGCHLD", None)
        held = None
        if sigchld is not None and self._depth == 0 and threading.current_thread() is threading.main_thread():
            held = signal.signal(sigchld, signal.SIG_DFL)
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if held is not None:
                signal.signal(sigchld, held)
        if self._depth == 0 and self._pending:
            self._pending = False
            if raise_pending:
                raise KeyboardInterrupt

    def explains(self, error: BaseException) -> bool:
        """True when `error` is how an interrupt surfaced: KeyboardInterrupt, or a DataLoader worker
        that SIGTERM (sent to the whole process group) killed before the main process saw it."""
        return isinstance(error, KeyboardInterrupt) or (self.received is not None and isinstance(error, RuntimeError))
