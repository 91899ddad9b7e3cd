"""keep_freed_memory: large CPU buffers are reused from the heap instead of faulted in anew."""
import os
import platform
import subprocess
import sys

import pytest

SCRIPT = r"""
import resource, sys, torch
from convnext.memory import keep_freed_memory
kept = keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):  # warm-up: the heap grows to its steady size
    torch.empty(48 << 18).fill_(1)  # 48 MiB, above glibc's largest dynamic mmap threshold (32 MiB)
start = faults()
for _ in range(5):
    torch.empty(48 << 18).fill_(1)
print(kept, (faults() - start) / 5)
"""


def _faults(env_value):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CONVNEXT_KEEP_FREED_MEMORY", None)
    if env_value is not None:
        env["CONVNEXT_KEEP_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True).stdout
    kept, per_alloc = out.split()
    return kept == "True", float(per_alloc)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt: elsewhere it does nothing")
def test_large_buffers_are_reused_without_page_faults():
    kept, faults = _faults(None)
    assert kept
    assert faults < 100  # 48 MiB is 12,288 pages: each one was faulted in on every allocation before
    off, faults_off = _faults("0")
    assert not off and faults_off > 10_000  # the switch really switches: without it every page faults again


def test_default_allocator_is_kept_when_asked_first():
    script = ("from convnext.memory import keep_default_allocator, keep_freed_memory\n"
              "keep_default_allocator()\nprint(keep_freed_memory())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_asking_changes_nothing():
    script = ("from convnext.memory import freed_memory_kept, keep_freed_memory\n"
              "before = freed_memory_kept()\nkept = keep_freed_memory()\nprint(before, freed_memory_kept() == kept)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
