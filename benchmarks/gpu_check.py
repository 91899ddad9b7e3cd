"""GPU check of issues 9 and 18, one prepared script: Triton kernel correctness, then timings.

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
  5. times the training loaders on the GPU, `convnext bench --mode data --device cuda` (`--loader
     workers`, `device`, `dali`) on the CIFAR-10 train JPEGs as stored (32px) and upscaled to
     500x375 (an ImageNet-like decode), at 224px and at the CIFAR recipe's 32px;
  6. runs the CIFAR-10 recipe (`convnext train --recipe cifar10`, `--loader auto`) under a wall-clock
     cap that includes extracting the tarballs, and a short `--loader dali` run of the same recipe:
     top-1 on the test split (reporting only), img/s per epoch, wall seconds, the loader that ran;
  7. prints one JSON object (also written to --out).

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

Steps 1-4 and 5-6 each fit one device call of 10 minutes (`--skip-data --skip-cifar`, then
`--skip-kernels --skip-timing --skip-bench`). It runs from a bare checkout: `python -m convnext` with src/ on
PYTHONPATH, no install. The CIFAR-10 tarballs are looked for in --cifar-dir (default ../shared/data,
else .gpu_data/; the shared folder does not travel to a lent machine: copy them into an ignored
.gpu_data/ and carry it).

NVIDIA DALI is not on the lent machine's image and nothing can be fetched there; its wheels (about
257 MB for Python 3.12) exceed one call's 64 MiB carry. `--prepare-dali-wheels DIR` (run here, no GPU)
downloads them and splits them into DIR/g0, g1, ... of at most 56 MiB each; carry one group per
call (ignored paths stay on the warm machine between calls), then pass `--dali-wheels DIR` in the
last call: the parts are joined and installed into /tmp/site. Without DALI, step 5 times workers and
device only and step 6 skips its DALI run, saying so in the JSON.

Not yet run on a GPU: no figure from it is quoted anywhere.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

# ConvNeXt-T stage shapes (C, H=W at 224px); batch kept small for the correctness part.
STAGES = ((96, 56), (192, 28), (384, 14), (768, 7))
ROOT = Path(__file__).resolve().parent.parent
# NVIDIA DALI for CUDA 13 and what it needs that the GPU image lacks (versions read from pip's resolution here).
DALI_WHEELS = ("nvidia-dali-cuda130==2.4.0", "nvidia-nvimgcodec-cu13==0.9.0.20", "nvidia-libnvcomp-cu13==5.3.0.16",
               "nvidia-nvjpeg==13.3.2.43", "nvidia-nvjpeg2k-cu13==0.11.0.51", "nvidia-nvtiff-cu13==0.8.0.82",
               "astunparse==1.6.3", "gast==0.7.0", "libcst==1.9.0", "makefun==1.16.0", "optree==0.20.0",
               "nvtx==0.2.17")


def convnext_cmd() -> tuple[list[str], dict]:
    """`python -m convnext` from this checkout (no install needed) and its environment."""
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH")) if p)
    return [sys.executable, "-m", "convnext"], dict(os.environ, PYTHONPATH=path)


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
    base, env = convnext_cmd()
    cmd = base + ["bench", "--device", "cuda", "--model", "convnext_tiny", "--batch-size", str(batch),
                  "--dtype", "bf16", "--channels-last", "--mode", mode, "--compare", "timm", "--iters", str(iters),
                  "--repeats", str(repeats), "--no-progress", "--json", str(path)] + (["--compile"] if compile_ else [])
    t0 = time.perf_counter()
    run = subprocess.run(cmd, env=dict(env, CONVNEXT_TRITON=triton), capture_output=True, text=True, check=False)
    result = {"command": f"CONVNEXT_TRITON={triton} convnext " + " ".join(cmd[3:]), "rc": run.returncode,
              "wall_s": round(time.perf_counter() - t0, 1)}
    if run.returncode == 0 and path.exists():
        result["report"] = json.loads(path.read_text())
    else:
        result["output_tail"] = (run.stdout + run.stderr)[-3000:]
    return {name: result}


def prepare_dali_wheels(out: Path, part_mib: int = 56) -> dict:
    """Here (no GPU): download DALI's Python 3.12 wheels and split them into carry groups out/g0, g1, ..."""
    dl = out / "download"
    dl.mkdir(parents=True, exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                             "manylinux2014_x86_64", "manylinux1_x86_64") for a in ("--platform", p)]
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dl), *DALI_WHEELS],
                   check=True)
    limit, chunks = part_mib * 2**20, []
    for wheel in sorted(dl.glob("*.whl")):
        data = wheel.read_bytes()
        chunks += [(f"{wheel.name}.part{k // limit:03d}", data[k : k + limit])  # NAME.whl.part000, part001, ...
                   for k in range(0, len(data), limit)]
    groups: list[list] = []
    for name, chunk in sorted(chunks, key=lambda c: -len(c[1])):  # first fit, largest first
        home = next((g for g in groups if sum(len(c) for _, c in g) + len(chunk) <= limit), None)
        if home is None:
            groups.append(home := [])
        home.append((name, chunk))
    for g, files in enumerate(groups):
        (out / f"g{g}").mkdir(exist_ok=True)
        for name, chunk in files:
            (out / f"g{g}" / name).write_bytes(chunk)
    shutil.rmtree(dl)
    plan = {"groups": [sorted(n for n, _ in files) for files in groups],
            "carry": [str(out / f"g{g}") for g in range(len(groups))]}
    print(json.dumps(plan, indent=1))
    return plan


def install_dali(wheels: Path | None) -> dict:
    """DALI importable in this process and in subprocesses: already there, or joined from `wheels`' parts."""
    try:
        import nvidia.dali

        return {"version": nvidia.dali.__version__, "from": "installed"}
    except ImportError:
        pass
    if wheels is None or not wheels.is_dir():
        return {"version": None, "from": "not installed (see --dali-wheels)"}
    t0 = time.perf_counter()
    joined = Path(tempfile.mkdtemp(prefix="dali_wheels_"))
    parts: dict[str, list[Path]] = {}
    for part in wheels.rglob("*.whl.part*"):
        parts.setdefault(part.name.rsplit(".part", 1)[0], []).append(part)
    for name, pieces in parts.items():
        with open(joined / name, "wb") as f:
            for piece in sorted(pieces, key=lambda q: q.name):
                f.write(piece.read_bytes())
    for whl in wheels.rglob("*.whl"):
        shutil.copy(whl, joined / whl.name)
    site = "/tmp/site"
    run = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                          "--no-cache-dir", "--upgrade", "--target", site, *map(str, sorted(joined.glob("*.whl")))],
                         capture_output=True, text=True, check=False)
    if run.returncode:
        return {"version": None, "from": f"install failed: {(run.stdout + run.stderr)[-1500:]}"}
    sys.path.insert(0, site)
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (site, os.environ.get("PYTHONPATH")) if p)
    import nvidia.dali

    return {"version": nvidia.dali.__version__, "from": str(wheels), "install_s": round(time.perf_counter() - t0, 1)}


def find_cifar(cifar_dir: Path | None) -> Path | None:
    """The folder holding cifar10-{train,test}-jpeg.tar.gz, or None."""
    for d in ([cifar_dir] if cifar_dir else [ROOT.parent / "shared" / "data", ROOT / ".gpu_data"]):
        if (d / "cifar10-train-jpeg.tar.gz").is_file() and (d / "cifar10-test-jpeg.tar.gz").is_file():
            return d
    return None


def data_loaders(cifar: Path, images: int, repeats: int, batch: int, workers: int, dali: bool, tmp: Path) -> dict:
    """`convnext bench --mode data --device cuda`: img/s of each training loader, at 224px and 32px."""
    out = {}
    loaders = "workers,device,dali" if dali else "workers,device"
    base, env = convnext_cmd()
    for size in (224, 32):
        path = tmp / f"data_{size}.json"
        cmd = base + ["bench", "--mode", "data", "--device", "cuda", "--data", str(cifar / "cifar10-train-jpeg.tar.gz"),
                      "--images", str(images), "--repeats", str(repeats), "--batch-size", str(batch),
                      "--img-size", str(size), "--num-workers", str(workers), "--loaders", loaders,
                      "--no-progress", "--json", str(path)]
        t0 = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        res = {"command": "convnext " + " ".join(cmd[3:]), "rc": run.returncode,
               "wall_s": round(time.perf_counter() - t0, 1), "stdout": run.stdout[-4000:]}
        if run.returncode == 0 and path.exists():
            res["report"] = json.loads(path.read_text())
        else:
            res["output_tail"] = (run.stdout + run.stderr)[-3000:]
        out[f"img{size}"] = res
    return out


def cifar_run(cifar: Path, loader: str, epochs: int | None, wall_limit: float, tmp: Path) -> dict:
    """The CIFAR-10 recipe on one GPU under `wall_limit` seconds, extraction of the tarballs included."""
    t0 = time.perf_counter()
    data = tmp / f"cifar10_{loader}"
    for split in ("train", "test"):
        with tarfile.open(cifar / f"cifar10-{split}-jpeg.tar.gz") as tar:
            tar.extractall(data, filter="data")
    prep = time.perf_counter() - t0
    out = tmp / f"run_{loader}"
    base, env = convnext_cmd()
    cmd = base + ["train", "--recipe", "cifar10", "--data", str(data), "--device", "cuda", "--loader", loader,
                  "--no-progress", "--output", str(out)] + (["--epochs", str(epochs)] if epochs else [])
    result = {"command": "convnext " + " ".join(cmd[3:]), "prep_s": round(prep, 1), "wall_limit_s": wall_limit}
    try:
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False,
                             timeout=max(1.0, wall_limit - prep))
        result.update(rc=run.returncode, timed_out=False, output_tail=(run.stdout + run.stderr)[-3000:])
    except subprocess.TimeoutExpired as e:
        result.update(rc=None, timed_out=True, output_tail=((e.stdout or b"")[-3000:]).decode(errors="replace"))
    result["wall_s_including_prep"] = round(time.perf_counter() - t0, 1)
    metrics = out / "metrics.json"  # rewritten after every epoch: a capped run keeps its finished epochs
    if metrics.exists():
        m = json.loads(metrics.read_text())
        result["metrics"] = {k: m.get(k) for k in ("top1", "top5", "best_top1", "best_epoch", "epochs", "loader",
                                                   "train_images_per_sec", "wall_seconds", "device", "model")}
        result["history"] = [{k: h.get(k) for k in ("epoch", "top1", "train_loss", "train_images_per_sec",
                                                     "epoch_seconds")} for h in m.get("history", [])]
    shutil.rmtree(data, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description="Triton kernel check + ours vs timm timings on one CUDA GPU.")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--skip-bench", action="store_true", help="skip the `convnext bench` whole-model runs")
    p.add_argument("--skip-timing", action="store_true", help="skip the per-kernel / per-block timings")
    p.add_argument("--timing-batch", type=int, default=128, help="batch of the per-kernel / per-block timings")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--skip-kernels", action="store_true", help="skip the Triton correctness checks")
    p.add_argument("--skip-data", action="store_true", help="skip the training-loader timings")
    p.add_argument("--skip-cifar", action="store_true", help="skip the CIFAR-10 recipe runs")
    p.add_argument("--cifar-dir", type=Path, default=None, help="folder with cifar10-{train,test}-jpeg.tar.gz")
    p.add_argument("--cifar-wall", type=float, default=300.0, help="wall-clock cap of the CIFAR-10 run (s)")
    p.add_argument("--cifar-epochs", type=int, default=None, help="epochs of the CIFAR-10 run (default: the recipe's)")
    p.add_argument("--dali-epochs", type=int, default=2, help="epochs of the --loader dali CIFAR-10 run (0: none)")
    p.add_argument("--data-images", type=int, default=2000, help="images per pass of the loader timings")
    p.add_argument("--data-batch", type=int, default=256, help="batch of the loader timings")
    p.add_argument("--data-workers", type=int, default=min(16, os.cpu_count() or 1),
                   help="DataLoader workers / DALI threads of the loader timings")
    p.add_argument("--dali-wheels", type=Path, default=None, help="folder of DALI wheel parts to install first")
    p.add_argument("--prepare-dali-wheels", type=Path, default=None, metavar="DIR",
                   help="(no GPU needed) download DALI's wheels into carry groups DIR/g0, g1, ... and exit")
    args = p.parse_args(argv)

    if args.prepare_dali_wheels:
        return {"prepared": prepare_dali_wheels(args.prepare_dali_wheels)}

    import torch

    if not torch.cuda.is_available():
        p.error("no CUDA device: this script is for a GPU machine (the CPU tests use TRITON_INTERPRET=1)")
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    try:
        import triton

        report["triton"] = triton.__version__
    except ImportError:
        report["triton"] = None
    if not args.skip_kernels:
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
    if not (args.skip_data and args.skip_cifar):
        report["dali"] = install_dali(args.dali_wheels)
        cifar = find_cifar(args.cifar_dir)
        if cifar is None:
            report["cifar10"] = "cifar10-{train,test}-jpeg.tar.gz not found (--cifar-dir, ../shared/data, .gpu_data/)"
        else:
            has_dali = report["dali"]["version"] is not None
            with tempfile.TemporaryDirectory() as tmp:
                if not args.skip_data:
                    report["loaders"] = data_loaders(cifar, args.data_images, 3, args.data_batch, args.data_workers,
                                                     has_dali, Path(tmp))
                if not args.skip_cifar:
                    runs = {"auto": cifar_run(cifar, "auto", args.cifar_epochs, args.cifar_wall, Path(tmp))}
                    if args.dali_epochs and has_dali:
                        runs["dali"] = cifar_run(cifar, "dali", args.dali_epochs, args.cifar_wall, Path(tmp))
                    elif args.dali_epochs:
                        runs["dali"] = "not run: DALI does not import"
                    report["cifar10"] = runs
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(0 if "prepared" in result or all(result.get(k, {"ok": True})["ok"] for k in ("kernels", "gemms")) else 1)
