"""img/s of ConvNeXt-T (random weights, 224 px, batch 16): fp32 (fast_cpu_model) vs int8 PT2E, interleaved.

    python benchmarks/int8_speed.py [--rounds 5]

int8 twice: everything the X86 inductor quantizer annotates (convolutions, pwconv1, head), and
Linears only (`quantize_convs=False`). Each int8 program is compiled by inductor (freezing).
"""
import argparse
import os
import statistics
import time

import torch

from convnext.deploy.cpu import fast_cpu_model
from convnext.deploy.int8 import Int8Model, quantize_int8
from convnext.models import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model("convnext_tiny").eval()
    b = args.batch_size
    x = torch.randn(b, 3, 224, 224)
    runs = {"fp32": fast_cpu_model(model, "fp32", b, 224)}
    for convs in (False, True):
        q = Int8Model(quantize_int8(model, [x[:4]], 224, quantize_convs=convs), mixed_bf16=False)
        start = time.time()
        q(x)
        print(f"int8 (convs={convs}) compiled in {time.time() - start:.0f} s", flush=True)
        runs[f"int8 convs={convs}"] = q
    names = list(runs)
    samples = {k: [] for k in names}
    with torch.no_grad():
        for r in range(args.rounds):
            for k in names[r % len(names):] + names[: r % len(names)]:  # rotate the order per round
                start = time.perf_counter()
                runs[k](x)
                samples[k].append(time.perf_counter() - start)
    for k, v in samples.items():
        print(f"{k}: {b / statistics.median(v):.2f} img/s (s/batch {[round(s, 2) for s in v]})")
    print("load average", os.getloadavg())


if __name__ == "__main__":
    main()
