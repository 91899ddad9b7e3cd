"""CPU feature parsing and the precision `--dtype auto` picks from it (made-up feature sets)."""
import pytest

from convnext.deploy.features import CpuFeatures, cpu_features, parse_cpuinfo_flags, select_dtype
from convnext.errors import UserError

SPR = "processor\t: 0\nmodel name\t: Xeon\nflags\t\t: fpu avx512f avx512vbmi avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
ICX = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni avx512_bitalg\n"
ZEN4 = "flags : avx2 avx512f avx512_bf16 avx512_vnni\n"
OLD = "flags : sse sse2 avx avx2 fma\n"


def test_parse_cpuinfo_flags():
    spr = parse_cpuinfo_flags(SPR)
    assert spr.amx_bf16 and spr.amx_int8 and spr.avx512_bf16 and spr.avx512_vnni and spr.native_bf16
    icx = parse_cpuinfo_flags(ICX)
    assert icx.avx512_vnni and icx.native_int8 and not (icx.amx_bf16 or icx.avx512_bf16 or icx.native_bf16)
    assert not parse_cpuinfo_flags(OLD).native_int8
    assert "amx_bf16" in spr.describe() and "/proc/cpuinfo" in spr.describe()
    assert spr.avx512_vbmi and not icx.avx512_vbmi  # what our int8 kernels also need (`amx_gelu`)
    with pytest.raises(ValueError, match="flags"):
        parse_cpuinfo_flags("processor : 0\n")


def test_this_machine_is_read():
    f = cpu_features()
    assert isinstance(f, CpuFeatures) and f.source


@pytest.mark.parametrize("text, want", [(SPR, "bf16"), (ZEN4, "bf16"), (ICX, "fp32"), (OLD, "fp32")])
def test_auto_picks_bf16_only_with_native_bf16(text, want):
    dtype, why = select_dtype("auto", "cpu", parse_cpuinfo_flags(text))
    assert dtype == want and why.startswith(f"{want} (auto")


def test_explicit_dtype_is_kept_and_explained():
    icx, spr = parse_cpuinfo_flags(ICX), parse_cpuinfo_flags(SPR)
    assert select_dtype("fp32", "cpu", spr) == ("fp32", "fp32 (asked)")
    dtype, why = select_dtype("bf16", "cpu", icx)
    assert dtype == "bf16" and "emulated" in why
    assert "emulated" not in select_dtype("bf16", "cpu", spr)[1]
    assert select_dtype("auto", "cuda", spr)[0] == "fp32"  # the CPU path does not apply to other devices
    with pytest.raises(UserError, match="--dtype fp16"):
        select_dtype("fp16", "cpu", spr)
