"""Minor page faults per forward pass and img/s of our CPU path, with and without the kept allocator.

    python benchmarks/page_faults.py --dtype bf16 --path compile
    CONVNEXT_KEEP_FREED_MEMORY=0 python benchmarks/page_faults.py --dtype bf16 --path compile

One setting per process (glibc's thresholds cannot be reset once set): run it twice as above.
"""
import argparse
import resource
import time

import torch

from convnext.deploy.cpu import fast_cpu_model
from convnext.memory import keep_freed_memory
from convnext.models import create_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="convnext_tiny")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    p.add_argument("--path", default="compile", choices=("eager", "compile", "jit"))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.manual_seed(0)
    fast = fast_cpu_model(create_model(args.model).eval(), args.dtype, args.batch_size, 224, candidates=(args.path,))
    x = torch.randn(args.batch_size, 3, 224, 224)
    for _ in range(3):
        fast(x)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    start = time.perf_counter()
    for _ in range(args.repeats):
        fast(x)
    seconds = time.perf_counter() - start
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.repeats
    print(f"{fast.path}; kept allocator {keep_freed_memory()}: {faults:.0f} minor page faults per forward, "
          f"{args.repeats * args.batch_size / seconds:.1f} img/s")


if __name__ == "__main__":
    main()
