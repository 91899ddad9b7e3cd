"""What the CPU can do fast, and which precision the CPU inference path therefore uses.

bf16 pays off on CPU only where the hardware multiplies bf16 natively: Intel AMX (`amx_bf16`, the
tile unit of Sapphire Rapids and later) or AVX-512 BF16 (`avx512_bf16`, Cooper Lake, Zen 4).
Elsewhere oneDNN emulates bf16 with fp32 FMAs plus conversions, which is slower than fp32, so
`dtype="auto"` keeps fp32 there. int8 GEMMs are native with AVX-512 VNNI (`avx512_vnni`, Cascade
Lake and later) or AMX-INT8 (`amx_int8`).

Flags come from /proc/cpuinfo (Linux); elsewhere from `torch.backends.cpu.get_cpu_capability()`,
which only tells the widest vector ISA PyTorch dispatches to (e.g. "AVX512"), so bf16 is then
assumed absent unless the capability names AMX.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from ..errors import UserError

__all__ = ["CpuFeatures", "parse_cpuinfo_flags", "cpu_features", "select_dtype", "DTYPE_CHOICES"]

DTYPE_CHOICES = ("auto", "bf16", "fp32")


@dataclass(frozen=True)
class CpuFeatures:
    amx_bf16: bool = False
    amx_int8: bool = False
    avx512_bf16: bool = False
    avx512_vnni: bool = False
    avx512f: bool = False
    avx512_vbmi: bool = False  # byte permutes (our int8 kernels' GELU table, `amx_gelu`)
    source: str = "unknown"  # "/proc/cpuinfo", "torch capability ...", or "given"

    @property
    def native_bf16(self) -> bool:
        """bf16 GEMMs in hardware (AMX tiles or AVX-512 BF16 dot products)."""
        return self.amx_bf16 or self.avx512_bf16

    @property
    def native_int8(self) -> bool:
        return self.amx_int8 or self.avx512_vnni

    def describe(self) -> str:
        names = [n for n in ("amx_bf16", "amx_int8", "avx512_bf16", "avx512_vnni", "avx512f") if getattr(self, n)]
        return f"{' '.join(names) or 'none of amx_bf16/amx_int8/avx512_bf16/avx512_vnni'} (from {self.source})"


def parse_cpuinfo_flags(text: str) -> CpuFeatures:
    """The features named on the first `flags` line of a /proc/cpuinfo text (all cores list the same)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            return CpuFeatures(
                amx_bf16="amx_bf16" in flags, amx_int8="amx_int8" in flags, avx512_bf16="avx512_bf16" in flags,
                avx512_vnni="avx512_vnni" in flags, avx512f="avx512f" in flags, avx512_vbmi="avx512vbmi" in flags,
                source="/proc/cpuinfo",
            )
    raise ValueError("no 'flags' line in the cpuinfo text")


@functools.lru_cache(maxsize=1)
def cpu_features() -> CpuFeatures:
    """This machine's CPU features (cached: they do not change while the process runs)."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo_flags(f.read())
    except (OSError, ValueError):
        pass
    import torch

    cap = str(torch.backends.cpu.get_cpu_capability()).upper()  # e.g. "AVX512", "AVX2", "AMX" on some builds
    amx = "AMX" in cap
    return CpuFeatures(amx_bf16=amx, amx_int8=amx, avx512f="AVX512" in cap or amx,
                       source=f"torch capability {cap!r}")


def select_dtype(requested: str = "auto", device: str = "cpu", features: CpuFeatures | None = None) -> tuple[str, str]:
    """(dtype, why): the precision to run inference in, "bf16" or "fp32", and a short reason.

    "auto" is bf16 on a CPU with native bf16 (AMX-BF16 or AVX512-BF16), fp32 everywhere else (other
    CPUs, and other devices, where this CPU path does not apply). "fp32" and "bf16" are taken as
    asked; bf16 on a CPU without native support is allowed (it is emulated and slower) and says so.
    """
    if requested not in DTYPE_CHOICES:
        raise UserError(f"--dtype {requested}: choose from {', '.join(DTYPE_CHOICES)}")
    if device != "cpu":
        if requested == "bf16":
            return "bf16", f"bf16 on {device} (asked)"
        return "fp32", f"fp32 on {device} (the bf16 CPU path applies to --device cpu only)"
    features = features or cpu_features()
    if requested == "fp32":
        return "fp32", "fp32 (asked)"
    if requested == "bf16":
        if features.native_bf16:
            return "bf16", "bf16 (asked; this CPU has native bf16)"
        return "bf16", "bf16 (asked; this CPU has no AMX-BF16/AVX512-BF16, so bf16 is emulated and slower than fp32)"
    if features.amx_bf16:
        return "bf16", "bf16 (auto: this CPU has AMX-BF16)"
    if features.avx512_bf16:
        return "bf16", "bf16 (auto: this CPU has AVX512-BF16)"
    return "fp32", "fp32 (auto: this CPU has no AMX-BF16/AVX512-BF16; --dtype bf16 would be emulated)"
