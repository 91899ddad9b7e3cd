"""GPU check of issue 9, one prepared script: Triton kernel correctness, then timings.

On a CUDA machine:
  1. checks `convnext.models.triton_block.dwconv_layernorm` against the textbook depthwise conv +
     LayerNorm in bf16 at ConvNeXt-T's four stage shapes (forward and gradients), and a whole Block
     with the Triton path on vs off under bf16 autocast (output and parameter gradients);
  2. checks the two GEMM kernels (`linear_bias_gelu` for pwconv1, `linear_bias_scale_residual` for
     pwconv2) in bf16 at the same shapes against fp32 torch ops on the same bf16 operands;
  3. times, per stage shape, each GEMM kernel against cuBLAS + separate epilogue ops (eager) and
     inductor's fused version (torch.compile), and one Block (inference and forward + backward,
     bf16 autocast) on the Triton path vs eager without it vs compiled: the "measure and pick"
     data of the issue;
  4. runs `convnext bench` (ConvNeXt-T, bf16 autocast, channels_last) for inference at batch 256
     and a training step at batch 128: ours eager without Triton (CONVNEXT_TRITON=0), ours eager
     with the Triton kernel (CONVNEXT_TRITON=1), and everything compiled, each against timm;
  5. prints one JSON object (also written to --out).

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
        block_grads = {}
        for switch in ("1", "0"):  # parameter gradients of one training step, Triton path on vs off
            os.environ["CONVNEXT_TRITON"] = switch
            blk.zero_grad()
            with torch.autocast("cuda", dtype=torch.bfloat16):
                blk(x).float().square().mean().backward()
            block_grads[switch] = {n: p.grad.clone() for n, p in blk.named_parameters()}
        os.environ["CONVNEXT_TRITON"] = "1"
        grad_rel = max(((block_grads["1"][n] - g).norm() / g.norm().clamp_min(1e-12)).item()
                       for n, g in block_grads["0"].items())
        out[f"C{c}_{hw}x{hw}"] = {
            "fwd_max_abs_err": (y.float() - ref).abs().max().item(),
            "grad_x_max_abs_err": (gx.float() - gr).abs().max().item(),
            "block_max_abs_diff": (fused.float() - plain.float()).abs().max().item(),
            "ref_max_abs": ref.abs().max().item(),
            "block_param_grad_max_rel_l2": grad_rel,
        }
    ok = all(v["fwd_max_abs_err"] <= 0.05 * max(1.0, v["ref_max_abs"]) and v["block_max_abs_diff"] <= 0.1
             and v["block_param_grad_max_rel_l2"] <= 0.05 for v in out.values())
    return {"ok": ok, "stages": out}


def _gemm_operands(m: int, c: int, hidden: bool, dtype):
    """bf16 operands of pwconv1 (hidden=False: x (M, C), W (4C, C)) or pwconv2 (x (M, 4C), W (C, 4C))."""
    import torch

    k, n = (4 * c, c) if hidden else (c, 4 * c)
    x = torch.randn(m, k, device="cuda", dtype=dtype)
    w = (torch.randn(n, k, device="cuda") / k**0.5).to(dtype)
    b = (0.1 * torch.randn(n, device="cuda")).to(dtype)
    gamma = torch.rand(n, device="cuda").to(dtype) + 0.5
    res = torch.randn(m, n, device="cuda", dtype=dtype)
    return x, w, b, gamma, res


def check_gemms(batch: int = 8) -> dict:
    """Max relative error of the two GEMM kernels in bf16 (forward and input gradient) per stage shape."""
    import torch
    import torch.nn.functional as F

    from convnext.models.triton_block import linear_bias_gelu, linear_bias_scale_residual

    out = {}
    for c, hw in STAGES:
        torch.manual_seed(0)
        m = batch * hw * hw
        res = {}
        for name, hidden in (("pwconv1_bias_gelu", False), ("pwconv2_scale_residual", True)):
            ops = [t.requires_grad_() for t in _gemm_operands(m, c, hidden, torch.bfloat16)]
            ref_ops = [t.detach().float().requires_grad_() for t in ops]  # same rounded operands, fp32 maths
            if hidden:
                y, ref = linear_bias_scale_residual(*ops), ref_ops[4] + ref_ops[3] * F.linear(*ref_ops[:3])
            else:
                y, ref = linear_bias_gelu(*ops[:3]), F.gelu(F.linear(*ref_ops[:3]))
            grad = torch.randn_like(ref)
            (gx,) = torch.autograd.grad(y, ops[0], grad.to(y.dtype))
            (gr,) = torch.autograd.grad(ref, ref_ops[0], grad)
            res[name] = {"shape_MKN": [m, ops[0].shape[1], ops[1].shape[0]],
                         "fwd_max_rel_err": ((y.float() - ref).abs().max() / ref.abs().max()).item(),
                         "grad_x_max_rel_err": ((gx.float() - gr).abs().max() / gr.abs().max()).item()}
        out[f"C{c}_{hw}x{hw}"] = res
    ok = all(v["fwd_max_rel_err"] <= 2e-2 and v["grad_x_max_rel_err"] <= 5e-2 for s in out.values() for v in s.values())
    return {"ok": ok, "batch": batch, "stages": out}


def _cuda_ms(fn, iters: int) -> float:
    """Median ms of `fn()` over `iters` timed calls after 3 warm-up calls (autotuning, compilation)."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def time_kernels(batch: int, iters: int) -> dict:
    """ms per call at ConvNeXt-T stage shapes: each GEMM (Triton epilogue vs cuBLAS + eager ops vs
    inductor) and one Block (Triton path vs eager without it vs compiled), bf16."""
    import torch
    import torch.nn.functional as F

    from convnext.models.layers import Block
    from convnext.models.triton_block import linear_bias_gelu, linear_bias_scale_residual

    def gelu_ref(x, w, b):
        return F.gelu(F.linear(x, w, b))

    def residual_ref(x, w, b, g, r):
        return r + g * F.linear(x, w, b)

    candidates = {
        "pwconv1_bias_gelu": (False, {"triton": linear_bias_gelu, "eager": gelu_ref, "compiled": torch.compile(gelu_ref)}),
        "pwconv2_scale_residual": (True, {"triton": linear_bias_scale_residual, "eager": residual_ref,
                                          "compiled": torch.compile(residual_ref)}),
    }
    out = {}
    for c, hw in STAGES:
        stage = {}
        m = batch * hw * hw
        with torch.no_grad():
            for name, (hidden, fns) in candidates.items():
                ops = _gemm_operands(m, c, hidden, torch.bfloat16)
                ops = ops if hidden else ops[:3]
                stage[name] = {k: round(_cuda_ms(lambda f=f, ops=ops: f(*ops), iters), 4) for k, f in fns.items()}
        torch.manual_seed(0)
        blk = Block(c).cuda()
        compiled = torch.compile(blk)
        x = torch.randn(batch, c, hw, hw, device="cuda").contiguous(memory_format=torch.channels_last)
        xg = x.clone().requires_grad_()
        for mode in ("infer", "train"):
            blk.train(mode == "train")
            times = {}
            for label, model, switch in (("triton", blk, "1"), ("eager", blk, "0"), ("compiled", compiled, "0")):
                os.environ["CONVNEXT_TRITON"] = switch

                def step(model=model, mode=mode, x=x, xg=xg):
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        if mode == "infer":
                            with torch.no_grad():
                                return model(x)
                        return model(xg).float().sum().backward()

                times[label] = round(_cuda_ms(step, iters), 4)
            stage[f"block_{mode}"] = times
        os.environ["CONVNEXT_TRITON"] = "1"
        out[f"C{c}_{hw}x{hw}"] = stage
    return {"batch": batch, "iters": iters, "unit": "ms (median)", "stages": out}


def bench(mode: str, batch: int, triton: str, compile_: bool, tmp: Path, iters: int, repeats: int) -> dict:
    """One `convnext bench` run (ours vs timm); its JSON report, or the error output."""
    name = f"{mode}_b{batch}_triton{triton}_{'compiled' if compile_ else 'eager'}"
    path = tmp / f"{name}.json"
    cmd = ["convnext", "bench", "--device", "cuda", "--model", "convnext_tiny", "--batch-size", str(batch),
           "--dtype", "bf16", "--channels-last", "--mode", mode, "--compare", "timm", "--iters", str(iters),
           "--repeats", str(repeats), "--no-progress", "--json", str(path)] + (["--compile"] if compile_ else [])
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=dict(os.environ, CONVNEXT_TRITON=triton), capture_output=True, text=True, check=False)
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
    p.add_argument("--skip-bench", action="store_true", help="skip the `convnext bench` whole-model runs")
    p.add_argument("--skip-timing", action="store_true", help="skip the per-kernel / per-block timings")
    p.add_argument("--timing-batch", type=int, default=128, help="batch of the per-kernel / per-block timings")
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
    report["gemms"] = check_gemms()
    if not args.skip_timing:
        report["timing"] = time_kernels(args.timing_batch, args.iters)
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
    result = main()
    sys.exit(0 if result["kernels"]["ok"] and result["gemms"]["ok"] else 1)
