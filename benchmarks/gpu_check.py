"""GPU check of issue 9, one prepared script: Triton kernel correctness, then ours vs timm timings.

On a CUDA machine:
  1. checks `convnext.models.triton_block.dwconv_layernorm` against the textbook depthwise conv +
     LayerNorm in bf16 at ConvNeXt-T's four stage shapes (forward and gradients), and a whole Block
     with the kernel on vs off under bf16 autocast;
  2. runs `convnext bench` (ConvNeXt-T, bf16 autocast, channels_last) for inference at batch 256
     and a training step at batch 128: ours eager without Triton (CONVNEXT_TRITON=0), ours eager
     with the Triton kernel (CONVNEXT_TRITON=1), and everything compiled, each against timm;
  3. prints one JSON object (also written to --out).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

Not yet run on a GPU: no figure from it is quoted anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# ConvNeXt-T stage shapes (C, H=W at 224px); batch kept small for the correctness part.
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))


def check_kernels(batch: int = 8) -> dict:
    """Max |error| of the Triton path vs the textbook ops in bf16, per stage shape."""
    import torch

    from convnext.models.layers import Block
    from convnext.models.triton_block import dwconv_layernorm, use_triton

    os.environ["CONVNEXT_TRITON"] = "1"
    out = {}
    for c, hw in STAGES:
        torch.manual_seed(0)
        blk = Block(c, layer_scale_init_value=0.5).cuda()
        x = torch.randn(batch, c, hw, hw, device="cuda").contiguous(memory_format=torch.channels_last)
        assert use_triton(x, blk.dwconv, blk.norm), "the Triton path is not selected on CUDA"
        xb = x.bfloat16().requires_grad_()
        blk_b = Block(c, layer_scale_init_value=0.5).cuda().bfloat16()
        blk_b.load_state_dict(blk.state_dict())
        y = dwconv_layernorm(xb, blk_b.dwconv, blk_b.norm)
        xr = xb.detach().float().requires_grad_()
        ref = blk.norm(torch.nn.functional.conv2d(xr, blk_b.dwconv.weight.float(), blk_b.dwconv.bias.float(),
                                                  padding=3, groups=c).permute(0, 2, 3, 1))
        grad = torch.randn_like(ref)
        (gx,) = torch.autograd.grad(y, xb, grad.bfloat16())
        (gr,) = torch.autograd.grad(ref, xr, grad)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            fused = blk(x)
            os.environ["CONVNEXT_TRITON"] = "0"
            plain = blk(x)
            os.environ["CONVNEXT_TRITON"] = "1"
        out[f"C{c}_{hw}x{hw}"] = {
            "fwd_max_abs_err": (y.float() - ref).abs().max().item(),
            "grad_x_max_abs_err": (gx.float() - gr).abs().max().item(),
            "block_max_abs_diff": (fused.float() - plain.float()).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(),
        }
    ok = all(v["fwd_max_abs_err"] <= 0.05 * max(1.0, v["ref_max_abs"]) and v["block_max_abs_diff"] <= 0.1
             for v in out.values())
    return {"ok": ok, "stages": out}


def bench(mode: str, batch: int, triton: str, compile_: bool, tmp: Path, iters: int, repeats: int) -> dict:
    """One `convnext bench` run (ours vs timm); its JSON report, or the error output."""
    name = f"{mode}_b{batch}_triton{triton}_{'compiled' if compile_ else 'eager'}"
    path = tmp / f"{name}.json"
    cmd = ["convnext", "bench", "--device", "cuda", "--model", "convnext_tiny", "--batch-size", str(batch),
           "--dtype", "bf16", "--channels-last", "--mode", mode, "--compare", "timm", "--iters", str(iters),
           "--repeats", str(repeats), "--no-progress", "--json", str(path)] + (["--compile"] if compile_ else [])
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=dict(os.environ, CONVNEXT_TRITON=triton), capture_output=True, text=True)
    result = {"command": f"CONVNEXT_TRITON={triton} " + " ".join(cmd), "rc": run.returncode,
              "wall_s": round(time.perf_counter() - t0, 1)}
    if run.returncode == 0 and path.exists():
        result["report"] = json.loads(path.read_text())
    else:
        result["output_tail"] = (run.stdout + run.stderr)[-3000:]
    return {name: result}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Triton kernel check + ours vs timm timings on one CUDA GPU.")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--skip-bench", action="store_true", help="only the kernel correctness check")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA device: this script is for a GPU machine (the CPU tests use TRITON_INTERPRET=1)")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    report["kernels"] = check_kernels()
    if not args.skip_bench:
        runs = {}
        with tempfile.TemporaryDirectory() as tmp:
            for mode, batch in (("infer", 256), ("train", 128)):
                runs |= bench(mode, batch, "0", False, Path(tmp), args.iters, args.repeats)
                runs |= bench(mode, batch, "1", False, Path(tmp), args.iters, args.repeats)
                runs |= bench(mode, batch, "0", True, Path(tmp), args.iters, args.repeats)
        report["bench"] = runs
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["kernels"]["ok"] else 1)
