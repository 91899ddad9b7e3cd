"""Where exact fp32 CPU inference of ConvNeXt-T spends its time, and how fast its GEMMs run.

    python benchmarks/fp32_ceiling.py [--batch-size 16] [--rounds 5] [--json out.json]

For each stage's block shapes (224 px input) it times, with freed memory kept (`convnext.memory`, as `convnext bench`
runs), medians of `--rounds` rounds:
- one block's MLP as our fp32 model as built runs it (oneDNN matmuls: pwconv1 + bias + erf-GELU post-op, pwconv2 +
  bias + residual post-op), the same two matmuls over row chunks of 1-8k rows (hidden kept in cache), MKL's `addmm`
  with separate GELU / bias / residual passes (timm's order of work), and our one-pass kernel (`convnext::mlp_fp32`,
  what `fast_cpu_model(model, "fp32")` and `--dtype fp32` run, where it builds);
- each GEMM alone through MKL (`torch.mm`) and oneDNN (with and without the GELU post-op), in GMAC/s;
- the depthwise 7x7 conv + LayerNorm as oneDNN + `F.layer_norm` and as our one-pass kernel (where it builds).
The per-forward totals weight each shape by its block count (3, 3, 9, 3). The FMA rate printed is
2 cores x 2 FMA ports x 16 fp32 lanes x the clock in /proc/cpuinfo: the nominal clock. Cores that run above it under
load do better (single GEMMs measured up to 172 GMAC/s on the 2.6 GHz machine of docs/benchmarks.md), so it is a
yardstick, not a bound.
"""
import argparse
import json
import os

import torch
import torch.nn.functional as F

from convnext.deploy.int8 import time_per_batch
from convnext.memory import keep_freed_memory

STAGES = [(56, 96, 3), (28, 192, 3), (14, 384, 9), (7, 768, 3)]  # ConvNeXt-T at 224 px: side, channels, blocks


def median_ms(fn, rounds: int) -> float:
    """Median ms of `fn()` over `rounds` calls after a warm-up one."""
    return 1e3 * time_per_batch(lambda _: fn(), None, rounds)


def clock_ghz() -> float | None:
    try:
        with open("/proc/cpuinfo") as f:
            mhz = [float(line.split(":")[1]) for line in f if line.startswith("cpu MHz")]
        return max(mhz) / 1e3 if mhz else None
    except OSError:
        return None


def _our_kernels():
    """Our kernels' ops, or None where they do not build or run here (that row is then skipped)."""
    try:
        from convnext.deploy import amx_gelu

        return amx_gelu._ops() if amx_gelu.available() else None
    except Exception:  # noqa: BLE001
        return None


def mlp_times(m: int, c: int, rounds: int, ours) -> dict[str, float]:
    """ms of one block's MLP over m rows of c channels: as ours as built runs it, in row chunks, in timm's order,
    in our one-pass kernel."""
    linear = torch.ops.mkldnn._linear_pointwise
    x, res = torch.randn(m, c), torch.randn(m, c)
    w1, b1 = torch.randn(4 * c, c) * c**-0.5, torch.randn(4 * c) * 0.1
    w2, b2 = torch.randn(c, 4 * c) * (4 * c) ** -0.5, torch.randn(c) * 0.1

    def onednn():
        return linear.binary(linear(x, w1, b1, "gelu", [], "none"), res, w2, b2, "add")

    def chunked(step):
        def run():
            out = torch.empty(m, c)
            for i in range(0, m, step):
                h = linear(x[i:i + step], w1, b1, "gelu", [], "none")
                out[i:i + step] = linear.binary(h, res[i:i + step], w2, b2, "add")
            return out
        return run

    def mkl():  # timm's order of work: addmm (bias), GELU pass, addmm, residual pass
        return torch.addmm(b2, F.gelu(torch.addmm(b1, x, w1.t())), w2.t()) + res

    times = {"onednn (ours as built)": median_ms(onednn, rounds),
             "mkl addmm + separate passes (timm's order)": median_ms(mkl, rounds)}
    for step in (1024, 4096, 8192):
        if 2 * step <= m:
            times[f"onednn, row chunks of {step}"] = median_ms(chunked(step), rounds)
    if ours is not None:
        from convnext.deploy import amx_gelu

        (p1, q1), (p2, q2) = amx_gelu.pack_fp32(w1, b1), amx_gelu.pack_fp32(w2, b2)
        times["ours, one pass (mlp_fp32)"] = median_ms(lambda: ours.mlp_fp32(x, p1, q1, p2, q2, res), rounds)
    return times


def gemm_rates(name: str, a: torch.Tensor, w: torch.Tensor, b: torch.Tensor, rounds: int, gelu: bool) -> dict:
    """ms and GMAC/s of a @ w.T through MKL and oneDNN (and oneDNN with its erf-GELU post-op)."""
    linear = torch.ops.mkldnn._linear_pointwise
    macs = a.shape[0] * a.shape[1] * w.shape[0]
    wt = w.t()
    fns = {"mkl mm": lambda: torch.mm(a, wt), "onednn": lambda: linear(a, w, b, "none", [], "")}
    if gelu:
        fns["onednn + erf-GELU post-op"] = lambda: linear(a, w, b, "gelu", [], "none")
    out = {}
    for lib, fn in fns.items():
        ms = median_ms(fn, rounds)
        out[f"{name} {lib}"] = {"ms": ms, "gmac_s": macs / ms / 1e6}
    return out


def dw_norm_times(batch: int, side: int, c: int, rounds: int, ours) -> dict[str, float]:
    """ms of a block's depthwise 7x7 conv + LayerNorm: oneDNN + F.layer_norm, and our one-pass kernel."""
    conv = torch.nn.Conv2d(c, c, 7, padding=3, groups=c)
    norm = torch.nn.LayerNorm(c, eps=1e-6)
    img = torch.randn(batch, c, side, side).contiguous(memory_format=torch.channels_last)
    times = {"onednn conv + F.layer_norm": median_ms(lambda: norm(conv(img).permute(0, 2, 3, 1)), rounds)}
    if ours is not None and c % 16 == 0:
        from convnext.deploy import amx_gelu

        packed = amx_gelu.pack_depthwise(conv.weight)
        times["ours, one pass"] = median_ms(
            lambda: ours.dwconv_ln(img, packed, conv.bias, norm.weight, norm.bias, 1e-6), rounds)
    return times


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    keep_freed_memory()
    torch.manual_seed(0)
    ours = _our_kernels()
    threads, ghz = torch.get_num_threads(), clock_ghz()
    peak = threads * 2 * 16 * ghz if ghz else None
    rows_out, totals = [], {}
    with torch.inference_mode():
        for side, c, blocks in STAGES:
            m = args.batch_size * side * side
            gemms = {**gemm_rates("pwconv1", torch.randn(m, c), torch.randn(4 * c, c), torch.randn(4 * c),
                                  args.rounds, gelu=True),
                     **gemm_rates("pwconv2", torch.randn(m, 4 * c), torch.randn(c, 4 * c), torch.randn(c),
                                  args.rounds, gelu=False)}
            row = {"stage_side": side, "channels": c, "blocks": blocks, "rows": m,
                   "mlp_ms": mlp_times(m, c, args.rounds, ours), "gemms": gemms,
                   "dw_norm_ms": dw_norm_times(args.batch_size, side, c, args.rounds, ours)}
            for group in ("mlp_ms", "dw_norm_ms"):
                for k, v in row[group].items():
                    totals.setdefault(group, {}).setdefault(k, 0.0)
                    totals[group][k] += blocks * v
            rows_out.append(row)
            print(f"stage {side}x{side}x{c}, {m} rows: MLP "
                  + ", ".join(f"{k} {v:.1f} ms" for k, v in row["mlp_ms"].items()))
            print("  GEMMs: " + ", ".join(f"{k} {v['gmac_s']:.0f} GMAC/s" for k, v in gemms.items()))
            print("  dw conv + LN: " + ", ".join(f"{k} {v:.2f} ms" for k, v in row["dw_norm_ms"].items()))
    macs = sum(8 * args.batch_size * s * s * c * c * n for s, c, n in STAGES)
    print(f"per forward (batch {args.batch_size}): MLP " + ", ".join(
        f"{k} {v:.0f} ms" for k, v in totals["mlp_ms"].items() if "chunks" not in k))
    print("  dw conv + LN: " + ", ".join(f"{k} {v:.1f} ms" for k, v in totals["dw_norm_ms"].items()))
    if peak:
        print(f"  the MLPs' {macs / 1e9:.1f} GMAC at the nominal FMA rate ({peak:.0f} GMAC/s: {threads} threads x "
              f"32 MAC x {ghz:.2f} GHz) would take {macs / peak / 1e6:.0f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"batch_size": args.batch_size, "rounds": args.rounds, "threads": threads, "clock_ghz": ghz,
                       "nominal_fma_gmac_s": peak, "mlp_gmac_per_forward": macs / 1e9, "stages": rows_out,
                       "per_forward_ms": totals, "torch": torch.__version__,
                       "load_avg_after": os.getloadavg()}, f, indent=1)


if __name__ == "__main__":
    main()
