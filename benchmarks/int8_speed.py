"""img/s of ConvNeXt-T (or --model; random weights, 224 px, batch 16): our fp32 and bf16 paths vs int8 PT2E.

    python benchmarks/int8_speed.py [--model convnext_tiny] [--rounds 5] [--batch-size 16] [--convs] [--relu-bound]

fp32 and bf16 are `fast_cpu_model(model, dtype)` (the fastest of eager / inductor / TorchScript,
measured); bf16 is skipped where the CPU has no native bf16. int8 is every Linear quantized by the
X86 inductor quantizer (`--convs`: the convolutions too), compiled by inductor with freezing, with
the float ops in fp32 and, on a native-bf16 CPU, also in bf16 ("int8-mixed-bf16", what `load_int8`
picks there). Where the CPU runs our AMX kernel for pwconv1 + GELU (`convnext.deploy.amx_gelu`), the
int8 rows use it, as `load_int8` does (with each block's depthwise conv + LayerNorm + quantize in one pass
of ours), and rows without that pass and with oneDNN's erf-GELU post-op instead are added. Rounds
rotate the order; the medians and the per-round ratios are printed.

`--relu-bound` also times an int8 program with ReLU in place of every GELU. It is not a usable
model: it says how fast int8 would be if the GELU epilogue of pwconv1 (oneDNN's erf post-op) were
free, that is, how much of the gap to a target lies in GELU.
"""
import argparse
import json
import os
import statistics
import time

import torch

from convnext.deploy import amx_gelu
from convnext.deploy.cpu import fast_cpu_model
from convnext.deploy.features import cpu_features
from convnext.deploy.int8 import Int8Model, quantize_int8
from convnext.models import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="convnext_tiny", help="registered model name (default convnext_tiny)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--convs", action="store_true", help="also time int8 with the convolutions quantized")
    p.add_argument("--relu-bound", action="store_true",
                   help="also time int8 with ReLU in place of GELU (a bound: GELU's cost, not a model)")
    p.add_argument("--json", help="write the medians and ratios here")
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    b = args.batch_size
    x = torch.randn(b, 3, 224, 224)
    native_bf16 = cpu_features().native_bf16
    runs = {"fp32": fast_cpu_model(model, "fp32", b, 224)}
    if native_bf16:
        runs["bf16"] = fast_cpu_model(model, "bf16", b, 224)
    for name, fast in runs.items():
        print(f"{name}: {fast.path}", flush=True)
    for convs in (False, True) if args.convs else (False,):
        program = quantize_int8(model, [x[:4]], 224, quantize_convs=convs)
        for mixed in (False, True) if native_bf16 else (False,):
            # as `load_int8` runs it (pwconv1 + GELU in our AMX kernel where the CPU has one), and, where
            # that kernel ran, also with oneDNN's erf-GELU post-op
            key = f"int8{' +convs' if convs else ''}{' mixed-bf16' if mixed else ' (float ops fp32)'}"
            variants = [(key, Int8Model(program, mixed_bf16=mixed))]
            if variants[0][1].fused_norms:  # our GEMM kernels, depthwise conv and LayerNorm left to inductor / oneDNN
                fuse_norms, amx_gelu.fuse_dwconv_norms = amx_gelu.fuse_dwconv_norms, lambda gm: 0
                try:
                    variants.append((f"{key}, dwconv + LayerNorm not fused", Int8Model(program, mixed_bf16=mixed)))
                finally:
                    amx_gelu.fuse_dwconv_norms = fuse_norms
            if variants[0][1].fused_gelu:
                variants.append((f"{key}, oneDNN GELU post-op", Int8Model(program, mixed_bf16=mixed, fused_gelu=False)))
            for name, q in variants:
                start = time.time()
                q(x)
                print(f"{name} compiled in {time.time() - start:.0f} s ({q.describe()})", flush=True)
                runs[name] = q
    if args.relu_bound:
        import convnext.models.layers as layers

        gelu = layers.linear_gelu
        layers.linear_gelu = lambda x_, linear: torch.relu(linear(x_))  # captured by export, below
        try:
            program = quantize_int8(model, [x[:4]], 224)
        finally:
            layers.linear_gelu = gelu
        assert not any("gelu" in str(n.target) for n in program.graph.nodes)
        q = Int8Model(program, mixed_bf16=native_bf16)
        q(x)
        runs[f"int8{' mixed-bf16' if native_bf16 else ' (float ops fp32)'}, ReLU for GELU (bound)"] = q
    names = list(runs)
    samples = {k: [] for k in names}
    load_before = os.getloadavg()
    with torch.no_grad():
        for k in names:
            runs[k](x)  # warm-up
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order per round
                start = time.perf_counter()
                runs[k](x)
                samples[k].append(time.perf_counter() - start)
    base = "bf16" if native_bf16 else "fp32"
    report = {"model": args.model, "cpu": cpu_features().describe(), "batch": b, "rounds": args.rounds,
              "load_before": load_before, "load_after": os.getloadavg(), "img_per_s": {}, f"ratio_vs_{base}": {}}
    for k, v in samples.items():
        ratios = [s0 / s for s0, s in zip(samples[base], v)]
        report["img_per_s"][k] = b / statistics.median(v)
        report[f"ratio_vs_{base}"][k] = [statistics.median(ratios), min(ratios), max(ratios)]
        print(f"{k}: {b / statistics.median(v):.2f} img/s, vs {base} {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}..{max(ratios):.2f}) (s/batch {[round(s, 3) for s in v]})")
    print("load average before", load_before, "after", report["load_after"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
