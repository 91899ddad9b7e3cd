"""Keep freed memory in the process: no page faults on ConvNeXt's large CPU activations.

glibc's malloc serves every request above `M_MMAP_THRESHOLD` (dynamic, at most 32 MiB) with
fresh `mmap` pages and unmaps them on free. ConvNeXt's widest activation, the 4C-wide output of
stage 1's pwconv1, is 16 x 56 x 56 x 384 values at batch 16 (38.5 MB in bf16, 77 MB in fp32),
so each forward pass asked the kernel for those pages again: every 4 KiB page is faulted in and
zeroed before the GEMM writes it. Measured on a 2-core AMX VM (ConvNeXt-T, batch 16, 224 px,
`benchmarks/page_faults.py`): 28,227 minor page faults per bf16 forward (126,422 in fp32) and 0 with
the thresholds raised; bf16 inductor 73.3 -> 93.4 img/s, fp32 eager 20.9 -> 25.0 img/s.

`keep_freed_memory()` raises glibc's mmap and trim thresholds, so large blocks come from the heap
and stay there for the next forward pass (what jemalloc / tcmalloc, Intel's recommendation for
PyTorch CPU inference, do by design). The cost: the process's resident memory stays at its peak
instead of shrinking between passes. It is process-wide and applies once; on other C libraries
(macOS, musl) it does nothing. `CONVNEXT_KEEP_FREED_MEMORY=0`, or `keep_default_allocator()` called
first, turns it off (`convnext bench --allocator default`).
"""
from __future__ import annotations

import ctypes
import os

__all__ = ["keep_freed_memory", "keep_default_allocator", "freed_memory_kept"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_MMAP_THRESHOLD = 1 << 30  # requests up to 1 GiB from the heap
_TRIM_THRESHOLD = 2**31 - 1  # do not give the heap's free top back to the OS
_state: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap / trim thresholds once for this process; True when they are in force."""
    global _state
    if _state is not None:
        return _state
    _state = False
    if os.environ.get("CONVNEXT_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return _state
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library already loaded into this process
    except (OSError, TypeError, AttributeError):  # no mallopt (not glibc) or no dlopen(NULL) (Windows)
        return _state
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
    return _state


def keep_default_allocator() -> None:
    """Leave the C library's allocator settings as they are for the rest of the process.

    Must come before the first `keep_freed_memory()`: glibc cannot go back to its dynamic thresholds
    once they have been set.
    """
    global _state
    if _state:
        raise RuntimeError("freed memory is already being kept in this process (glibc cannot undo it)")
    _state = False


def freed_memory_kept() -> bool:
    """Whether `keep_freed_memory()` is in force in this process (asks; changes nothing)."""
    return bool(_state)
