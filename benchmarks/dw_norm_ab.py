"""A/B of one of our CPU kernels on `fast_cpu_model`'s path: the one-pass depthwise conv + LayerNorm
(`convnext::dwconv_ln`, `--kernel dw-norm`), the bf16 AMX pointwise GEMMs (`--kernel linears`) or the one-pass
MLP over them (`convnext::mlp_bf16`, `--kernel mlp`; B runs the two GEMMs).

    python benchmarks/dw_norm_ab.py --path compile --dtype bf16 --batch-size 16 [--kernel linears]
        [--rounds 8 --repeat 4] [--json F]

Builds ConvNeXt-T (random weights, layer scales spread so the blocks matter) twice through
`fast_cpu_model` with one candidate path: once as it runs by default (our kernels, where they build) and
once with the kernel switched off (`CONVNEXT_NO_FUSED_DW_NORM=1` / `CONVNEXT_NO_FUSED_LINEARS=1` /
`CONVNEXT_NO_FUSED_MLP=1`). Rounds
alternate the order; prints the max |logit diff| of each against the fp32 model as built, the median img/s
and the median of the per-round ratios (min..max).
"""
import argparse
import json
import os
import statistics
import time

import torch

from convnext.bench.peers import _spread_scales
from convnext.deploy.cpu import fast_cpu_model
from convnext.models import create_model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=("eager", "compile", "jit"), default="compile")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--repeat", type=int, default=4, help="calls timed together per round")
    p.add_argument("--kernel", choices=("dw-norm", "linears", "mlp"), default="dw-norm", help="the kernel switched off in B")
    p.add_argument("--json", help="write the figures here")
    args = p.parse_args()
    torch.manual_seed(0)
    model = create_model("convnext_tiny").eval()
    _spread_scales(model, torch.Generator().manual_seed(0))
    b = args.batch_size
    x = torch.randn(b, 3, 224, 224)
    runs = {"fused": fast_cpu_model(model, args.dtype, b, 224, candidates=(args.path,))}
    switch = {"dw-norm": "CONVNEXT_NO_FUSED_DW_NORM", "linears": "CONVNEXT_NO_FUSED_LINEARS",
              "mlp": "CONVNEXT_NO_FUSED_MLP"}[args.kernel]
    os.environ[switch] = "1"
    try:
        runs["not fused"] = fast_cpu_model(model, args.dtype, b, 224, candidates=(args.path,))
    finally:
        del os.environ[switch]
    report = {"kernel": args.kernel, "path": args.path, "dtype": args.dtype, "batch": b, "rounds": args.rounds, "repeat": args.repeat,
              "load_before": os.getloadavg(), "describe": {}, "max_abs_logit_diff_vs_fp32": {}, "img_per_s": {}}
    samples = {k: [] for k in runs}
    with torch.inference_mode():
        ref = model(x)
        for k, m in runs.items():
            report["describe"][k] = m.describe()
            report["max_abs_logit_diff_vs_fp32"][k] = (m(x).float() - ref).abs().max().item()
            print(f"{k}: {m.describe()}\n  max |logit diff| vs the fp32 model as built: "
                  f"{report['max_abs_logit_diff_vs_fp32'][k]:.3g} (max |logit| {ref.abs().max().item():.3g})")
        names = list(runs)
        for r in range(args.rounds):
            for k in names if r % 2 == 0 else names[::-1]:
                runs[k](x)
                start = time.perf_counter()
                for _ in range(args.repeat):
                    runs[k](x)
                samples[k].append(args.repeat * b / (time.perf_counter() - start))
    ratios = [f / n for f, n in zip(samples["fused"], samples["not fused"])]
    report["img_per_s"] = {k: statistics.median(v) for k, v in samples.items()}
    report["ratio"] = [statistics.median(ratios), min(ratios), max(ratios)]
    report["load_after"] = os.getloadavg()
    print(f"fused {report['img_per_s']['fused']:.1f} img/s, not fused {report['img_per_s']['not fused']:.1f} img/s: "
          f"{report['ratio'][0]:.3f}x ({report['ratio'][1]:.3f}..{report['ratio'][2]:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
