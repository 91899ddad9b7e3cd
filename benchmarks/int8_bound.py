"""Where int8 can and cannot beat our bf16 path: a profile of both programs, split by kind of work.

    python benchmarks/int8_bound.py [--batch-size 16] [--iters 3] [--json OUT.json]

Profiles (torch.profiler, inductor kernel profiling on) ConvNeXt-T (random weights, 224 px) run
through our bf16 path (`fast_cpu_model(model, "bf16")`, inductor) and the int8-mixed-bf16 program
(`Int8Model`, what `load_int8` runs on a native-bf16 CPU), and splits each forward into:

- gemm: the oneDNN Linears (bf16 `_linear_pointwise`, int8 `qlinear_pointwise`), with their fused
  bias / GELU / quantize / residual epilogues;
- conv: the oneDNN convolutions (stem, depthwise 7x7, downsampling), bf16 in both programs;
- kernels: inductor's generated kernels (LayerNorm, quantize, adds, pooling);
- rest: the profiled forward's wall time minus the above (wrapper, allocation, dispatch).

The parts are self CPU times under the profiler, of the graphs compiled with inductor's Python
wrapper (under the profiler, kernel calls from the C++ wrapper measured up to 1.3x slower), and the
bound is computed from them. The real paths (C++ wrapper) are also timed unprofiled, in interleaved
rounds: `unprofiled_ms`.

It also times one large GEMM (4096x1024 by 1024x1024) in int8 and bf16 through the same oneDNN
ops: the raw int8 : bf16 GEMM ratio of this CPU. The bound printed is the int8 speed-up over
our bf16 if every int8 GEMM ran that much faster than its bf16 counterpart and nothing else
changed: (bf16 total) / (int8 non-GEMM time + bf16 GEMM time / raw ratio).
"""
import argparse
import json
import time

import torch
from torch.profiler import ProfilerActivity, profile

from convnext.deploy.cpu import _compiled_with, _measure, fast_cpu_model, prepare_eager
from convnext.deploy.features import cpu_features
from convnext.deploy.int8 import Int8Model, quantize_int8
from convnext.memory import keep_freed_memory
from convnext.models import create_model


def kind(name: str) -> str | None:
    if "linear_pointwise" in name:
        return "gemm"
    if "convolution" in name:
        return "conv"
    if name.startswith("graph_") and "cpp_fused" in name:
        return "kernels"
    return None


def split(fn, x: torch.Tensor, iters: int) -> dict[str, float]:
    """ms per forward of each kind of work (self CPU time, mean over `iters` profiled forwards)."""
    for _ in range(3):  # compiles on the first call
        fn(x)
    start = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(iters):
            fn(x)
    total_ms = (time.perf_counter() - start) * 1e3 / iters
    parts = {"gemm": 0.0, "conv": 0.0, "kernels": 0.0}
    for e in prof.key_averages():
        k = kind(e.key)
        if k:
            parts[k] += e.self_cpu_time_total / 1e3 / iters
    parts["rest"] = total_ms - sum(parts.values())
    parts["total"] = total_ms
    return parts


def raw_gemm_ratio(m: int = 4096, k: int = 1024, n: int = 1024, repeats: int = 10) -> dict[str, float]:
    """ms of one large GEMM in bf16 (`mkldnn._linear_pointwise`) and int8 (`onednn.qlinear_pointwise`)."""
    q = torch.ops.onednn
    xb, wb = torch.randn(m, k).bfloat16(), torch.randn(n, k).bfloat16()
    x8, w8 = torch.randint(0, 255, (m, k), dtype=torch.uint8), torch.randint(-127, 127, (n, k), dtype=torch.int8)
    packed = q.qlinear_prepack(w8, [m, k])
    scale, zero = torch.rand(n) * 0.01, torch.zeros(n, dtype=torch.long)
    runs = {  # each takes the (unused) input _measure passes
        "bf16": lambda _: torch.ops.mkldnn._linear_pointwise(xb, wb, None, "none", [], ""),
        "int8": lambda _: q.qlinear_pointwise(x8, 0.05, 128, packed, scale, zero, None, 1.0, 0, torch.bfloat16,
                                              "none", [], ""),
    }
    out = {}
    for name, seconds in _measure(runs, xb, repeats).items():  # interleaved rounds, medians
        out[f"{name}_ms"] = seconds * 1e3
        out[f"{name}_tmac_per_s"] = m * k * n / seconds / 1e12
    out["int8_over_bf16"] = out["bf16_ms"] / out["int8_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--iters", type=int, default=3, help="profiled forwards per program")
    p.add_argument("--rounds", type=int, default=6, help="unprofiled interleaved rounds for the totals")
    p.add_argument("--json")
    args = p.parse_args()
    if not cpu_features().native_bf16:
        raise SystemExit("this CPU has no native bf16: the comparison is bf16 vs int8-mixed-bf16")
    keep_freed_memory()
    import torch._inductor.config as inductor_config

    inductor_config.cpp.enable_kernel_profile = True  # inductor's kernels show up by name
    torch.manual_seed(0)
    model = create_model("convnext_tiny").eval()
    x = torch.randn(args.batch_size, 3, 224, 224)
    bf16 = fast_cpu_model(model, "bf16", args.batch_size, 224, candidates=("compile",))
    int8 = Int8Model(quantize_int8(model, [x[:4]], 224), mixed_bf16=True)
    runs = {"bf16": bf16, "int8": int8}
    totals = {k: v * 1e3 for k, v in _measure(runs, x, args.rounds).items()}  # interleaved, rotating order
    profiled_int8 = Int8Model(quantize_int8(model, [x[:4]], 224), mixed_bf16=True)
    profiled_int8.cpp_wrapper = False
    profiled = {"bf16": _compiled_with(prepare_eager(model, "bf16"), x.bfloat16().contiguous(
        memory_format=torch.channels_last), max_autotune=False, cpp_wrapper=False), "int8": profiled_int8}
    inputs = {"bf16": x.bfloat16().contiguous(memory_format=torch.channels_last), "int8": x}
    parts = {k: split(fn, inputs[k], args.iters) for k, fn in profiled.items()}
    raw = raw_gemm_ratio()
    b, i = parts["bf16"], parts["int8"]
    best_int8 = i["total"] - i["gemm"] + b["gemm"] / raw["int8_over_bf16"]
    report = {"cpu": cpu_features().describe(), "batch": args.batch_size, "ms_per_forward": parts, "raw_gemm": raw,
              "unprofiled_ms": totals, "unprofiled_int8_over_bf16": totals["bf16"] / totals["int8"],
              "profiled_int8_over_bf16": b["total"] / i["total"], "bound_int8_over_bf16": b["total"] / best_int8,
              "int8_gemm_over_bf16_gemm": b["gemm"] / i["gemm"],
              "gemm_speedup_needed_for_1.5x": b["gemm"] / (b["total"] / 1.5 - (i["total"] - i["gemm"]))
              if b["total"] / 1.5 > i["total"] - i["gemm"] else None}
    print(f"ms per forward, batch {args.batch_size}, profiled (Python wrapper):")
    for name in ("gemm", "conv", "kernels", "rest", "total"):
        print(f"  {name:8s} bf16 {b[name]:7.1f}   int8-mixed-bf16 {i[name]:7.1f}")
    print(f"raw GEMM 4096x1024x1024: bf16 {raw['bf16_tmac_per_s']:.2f}, int8 {raw['int8_tmac_per_s']:.2f} TMAC/s "
          f"-> int8 {raw['int8_over_bf16']:.2f}x")
    print(f"unprofiled (C++ wrapper): bf16 {totals['bf16']:.1f} ms, int8-mixed-bf16 {totals['int8']:.1f} ms: "
          f"{report['unprofiled_int8_over_bf16']:.2f}x")
    print(f"int8 over bf16: profiled {report['profiled_int8_over_bf16']:.2f}x; ConvNeXt's int8 GEMMs "
          f"{report['int8_gemm_over_bf16_gemm']:.2f}x the bf16 ones; bound with the raw GEMM ratio "
          f"{report['bound_int8_over_bf16']:.2f}x")
    need = report["gemm_speedup_needed_for_1.5x"]
    print("1.5x would need int8 GEMMs " + (f"{need:.2f}x faster than bf16's" if need else
                                           "faster than free: the non-GEMM time alone exceeds the budget"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
