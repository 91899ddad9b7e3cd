"""`convnext bench`: speed of our ConvNeXt vs timm / torchvision, and of the training input pipeline."""
from __future__ import annotations

import argparse
import json
import os
import tarfile
from pathlib import Path

from ..errors import DataError, UserError
from .options import COMPARE_NAMES, DTYPE_NAMES, MODES

__all__ = ["register"]


def _parse_compare(text: str) -> tuple[str, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in COMPARE_NAMES]
    if unknown:
        raise UserError(f"--compare: unknown implementation(s) {unknown}; choose from {', '.join(COMPARE_NAMES)} or 'none'")
    return names


def _parse_cpu_paths(text: str | None) -> tuple[str, ...] | None:
    """--cpu-paths: None (every candidate of `convnext.deploy.fast_cpu_model`) or a subset of them."""
    if text is None or text.strip().lower() in ("", "all"):
        return None
    from ..deploy.cpu import CANDIDATES

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown or not names:
        raise UserError(f"--cpu-paths: unknown path(s) {unknown}; choose from {', '.join(CANDIDATES)} or 'all'")
    return names


def _write_json(path: str | None, report: dict) -> None:
    if path:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        print(f"wrote {out}")


def _cmd_data(args: argparse.Namespace) -> int:
    from ..data.pipeline import train_transform
    from .data import bench_transform, read_jpegs, upscaled_jpegs
    from .runner import machine_info

    if not args.data:
        raise UserError("--mode data needs --data PATH: a .tar(.gz) of JPEGs (e.g. cifar10-train-jpeg.tar.gz), "
                        "an ImageFolder root or a folder of images")
    if not Path(args.data).exists():
        raise UserError(f"--data {args.data}: no such file or folder (expected a .tar(.gz) of JPEGs or a folder "
                        "of images)")
    try:
        jpegs = read_jpegs(args.data, args.images)
    except (ValueError, OSError, tarfile.TarError) as e:  # not a tarball, or no images inside
        raise UserError(f"--data {args.data}: {e}") from None
    transform = train_transform(args.img_size)
    report = {"machine": machine_info("cpu"), "transform": repr(transform), "data": str(args.data), "results": {}}
    sources = (("as stored", jpegs), ("upscaled to 500x375, re-encoded q90", upscaled_jpegs(jpegs)))
    for label, images in sources:
        r = bench_transform(images, transform, repeats=args.repeats)
        report["results"][label] = r
        print(f"{label:<38} {r['source_size'][0]}x{r['source_size'][1]} ({r['mean_jpeg_kib']:.1f} KiB): "
              f"{r['img_per_s_per_worker']:.1f} img/s per worker "
              f"(range {r['img_per_s_min']:.1f}..{r['img_per_s_max']:.1f} over {r['repeats']} passes of {r['images']})")
    _bench_loaders(args, sources, report)
    _write_json(args.json, report)
    return 0


def _bench_loaders(args: argparse.Namespace, sources, report: dict) -> None:
    """img/s of each training loader (`--loader workers|device|dali`) on args.device, per image source."""
    from ..data.dali import dali_available
    from ..data.pipeline import loader_throughput

    kinds = [k.strip() for k in args.loaders.split(",") if k.strip() and k.strip() != "none"]
    unknown = sorted(set(kinds) - {"workers", "device", "dali"})
    if unknown:
        raise UserError(f"--loaders: unknown loader(s) {unknown}; choose from workers, device, dali or 'none'")
    if "dali" in kinds and not dali_available():
        print("dali: not timed, NVIDIA DALI does not import (pip install 'convnext[dali]')")
        kinds.remove("dali")
    report["loaders"] = {}
    for label, images in sources:
        for kind in kinds:
            try:
                r = loader_throughput(kind, images, args.img_size, device=args.device,
                                      batch_size=args.batch_size or 64, repeats=args.repeats,
                                      num_workers=args.num_workers)
            except DataError as e:  # e.g. images of several sizes for the device-resident loader
                report["loaders"][f"{kind}, {label}"] = {"loader": kind, "error": str(e)}
                print(f"--loader {kind:<8} {label:<38} not timed: {e}")
                continue
            report["loaders"][f"{kind}, {label}"] = r
            print(f"--loader {kind:<8} {label:<38} {r['img_per_s']:.1f} img/s on {r['device']} "
                  f"(range {r['img_per_s_min']:.1f}..{r['img_per_s_max']:.1f} over {r['repeats']} epochs of "
                  f"{r['images']}, batch {r['batch_size']}, {r['num_workers']} workers/threads)")


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.mode == "data":
        if args.plot:
            raise UserError("--plot: charts are drawn for --mode infer / train runs, not --mode data")
        return _cmd_data(args)
    from ..models import get_spec
    from .runner import BenchConfig, OutputMismatch, format_report, run_benchmark

    try:
        spec = get_spec(args.model)
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    if spec.task != "classification":
        if args.plot:
            raise UserError("--plot: charts are drawn for classification models (dense models have no peers)")
        return _cmd_bench_dense(args)
    if args.plot:
        from .plot import check_plot_path

        check_plot_path(args.plot)
    settings = dict(
        model=args.model, batch_size=args.batch_size or 16, img_size=args.img_size, mode=args.mode, dtype=args.dtype,
        channels_last=args.channels_last, compile=args.compile, compare=_parse_compare(args.compare),
        device=args.device, warmup=args.warmup, repeats=args.repeats, iters=args.iters, tf32=args.tf32,
        tolerance=args.tolerance, optimize_ours=args.optimize_ours, cpu_paths=_parse_cpu_paths(args.cpu_paths),
        allocator=args.allocator,
    )
    if args.preset == "paper":
        # Table 1 / App. E protocol: batch 64, fp32, 224; on GPU the A100 setting adds TF32 + channels_last.
        settings.update(batch_size=64, img_size=224, dtype="fp32")
        if args.device.startswith("cuda"):
            settings.update(tf32=True, channels_last=True)
        print("preset paper: batch 64, 224px, fp32" + (", TF32, channels_last" if settings["tf32"] else ""))
    try:
        cfg = BenchConfig(**settings)
        report = run_benchmark(cfg, progress=not args.no_progress)
    except ValueError as e:  # bad combination of flags, CUDA missing
        raise UserError(str(e)) from None
    except OutputMismatch as e:
        print(f"convnext bench: FAILED: {e}")
        return 1
    print(format_report(report))
    _write_json(args.json, report)
    if args.plot:
        from .plot import plot_reports

        print(f"wrote {plot_reports([report], args.plot)}")
    return 0


def _cmd_bench_dense(args: argparse.Namespace) -> int:
    """A detector / segmenter: img/s of ours at the paper's FLOPs resolution (no peers exist)."""
    from .dense import format_dense_report, run_dense_benchmark

    if args.mode != "infer":
        raise UserError(f"--mode {args.mode}: dense models are timed for inference only")
    report = run_dense_benchmark(args.model, batch_size=args.batch_size or 1,
                                 device=args.device, dtype="fp32" if args.dtype == "auto" else args.dtype, warmup=min(args.warmup, 2),
                                 repeats=min(args.repeats, 5), progress=not args.no_progress)
    print(format_dense_report(report))
    _write_json(args.json, report)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="time our ConvNeXt against timm / torchvision with identical weights (or the input pipeline)",
        description="Runs ours and the peers' implementation of the same variant in one process with identical "
        "weights, checks their outputs agree, then times interleaved rounds and reports median img/s, latency, "
        "peak memory and the speed-up ours/peer. --mode data times the training transform per CPU worker.",
    )
    p.add_argument("--model", default="convnext_tiny", help="registered model name (default convnext_tiny)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 16; dense models 1)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--mode", choices=(*MODES, "data"), default="infer",
                   help="infer: forward; train: forward+backward+AdamW step; data: train transform img/s per worker")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="auto",
                   help="auto (default): bf16 where the CPU has AMX-BF16/AVX512-BF16, else fp32; on CPU inference "
                   "ours then runs convnext.deploy.fast_cpu_model (bf16 end to end, or fp32 with layer scale "
                   "folded) and the peers run under autocast. fp32: exact fp32, ours on CPU via fast_cpu_model in fp32 "
                   "(layer scale folded, our one-pass kernels where they run). bf16: as auto's bf16. "
                   "fp16: autocast")
    p.add_argument("--channels-last", action="store_true", help="models and input in channels_last memory format")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile every implementation (ours on CPU with --dtype auto/bf16: the compiled path only)")
    p.add_argument("--cpu-paths", default=None, metavar="LIST",
                   help="CPU inference: the paths of ours timed before the run, the fastest kept (comma-separated "
                   "among eager, compile, jit; default all: compiling takes tens of seconds)")
    p.add_argument("--allocator", choices=("kept", "default"), default="kept",
                   help="CPU: kept (default): freed memory kept for reuse, as ours sets up (convnext.memory); "
                   "default: the C library's settings. Process-wide: every implementation of the run gets it")
    p.add_argument("--compare", default="timm,torchvision",
                   help="comma-separated among: timm, torchvision (same weights), onnxruntime, openvino (its "
                   "default precision: bf16 on AMX CPUs), openvino-f32 (our ONNX export of the same weights, CPU "
                   "inference), int8 (ours as a PT2E int8 program, calibrated on random images: its speed, CPU "
                   "inference; needs torchao); 'none' for ours alone")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--tf32", action="store_true", help="allow TF32 on CUDA")
    p.add_argument("--preset", choices=("paper",), default=None,
                   help="paper: batch 64, fp32, 224 (+ TF32 and channels_last on CUDA), prints the paper's img/s")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation")
    p.add_argument("--repeats", type=int, default=10, help="timed rounds")
    p.add_argument("--iters", type=int, default=1, help="steps per implementation per round")
    p.add_argument("--optimize-ours", action="store_true",
                   help="infer: ours as built with convnext.models.inference.optimize_for_inference applied "
                   "(layer scale folded once; on CPU with --dtype fp32 instead of fast_cpu_model's path)")
    p.add_argument("--tolerance", type=float, default=None, help="max |logit diff| allowed (default by dtype)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the full report as JSON")
    p.add_argument("--plot", default=None, metavar="OUT",
                   help="also draw the run as a chart (.png/.svg/.pdf/.jpg): img/s of each implementation, its "
                   "spread over rounds and the speed-up ours / it")
    p.add_argument("--data", default=None,
                   help="--mode data: .tar(.gz) of JPEGs (e.g. cifar10-train-jpeg.tar.gz), an ImageFolder root or a "
                   "folder of images")
    p.add_argument("--images", type=int, default=500, help="--mode data: number of images per pass")
    p.add_argument("--loaders", default="workers,device,dali",
                   help="--mode data: training loaders also timed whole (batches on --device), or 'none'")
    p.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="--mode data: DataLoader workers / DALI CPU threads of the loader timings")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_bench)
