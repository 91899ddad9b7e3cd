"""Where a ConvNeXt forward spends its time on CPU: torch.profiler self-time per op, ours vs peers.

    python benchmarks/profile_cpu.py --model convnext_tiny --batch-size 16 [--compare timm] [--rounds 2]

Prints, per implementation and profiling round, the self CPU time of the top ops (ms, number of
calls). This is how the tricks in `src/convnext/models/fast.py` were chosen; see docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

from convnext.bench.peers import build_implementations
from convnext.models import fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="convnext_tiny")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--compare", default="timm")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--top", type=int, default=9)
    parser.add_argument("--no-onednn", action="store_true", help="ours without the oneDNN-fused Linears")
    args = parser.parse_args()

    fast.onednn_fusion_enabled(not args.no_onednn)
    impls, skipped = build_implementations(args.model, [p for p in args.compare.split(",") if p])
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    print(f"{args.model}, batch {args.batch_size}, {args.img_size}px, fp32, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()}, skipped: {skipped or '-'}")
    with torch.inference_mode():
        for r in range(args.rounds):
            for impl in impls:
                impl.model(x)  # warm-up
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    impl.model(x)
                events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
                total = sum(e.self_cpu_time_total for e in events) / 1e3
                top = ", ".join(f"{e.key.replace('aten::', '')} {e.self_cpu_time_total / 1e3:.0f} ({e.count})"
                                for e in events[: args.top])
                print(f"round {r} {impl.name:<11} total {total:6.0f} ms | {top}")


if __name__ == "__main__":
    main()
