"""Side-by-side speed benchmark: ours vs timm / torchvision on identical weights, in one process.

Protocol (the numbers in docs/benchmarks.md come from it):
1. build every implementation with the same weights (`peers.build_implementations`) and check that
   their outputs agree within a dtype-dependent tolerance; a mismatch aborts (`OutputMismatch`);
2. warm up each implementation (the first call includes `torch.compile` time, reported apart);
3. time `repeats` rounds; in each round every implementation runs `iters` steps, in an order that
   rotates from round to round, so that load from other processes hits all of them alike;
4. report per implementation the median latency and img/s with the spread, the peak memory of one
   step, and per peer the speed ratio ours/peer: from the medians, and the median (min, max) of
   the per-round ratios, which is the figure robust to a shared, noisy machine.
"""
from __future__ import annotations

import contextlib
import os
import platform
import sys
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..models.inference import optimize_for_inference
from .options import DTYPE_NAMES, MODES, RUNTIMES
from .paper import paper_throughput
from .peers import Implementation, build_implementations, build_runtimes

__all__ = ["BenchConfig", "OutputMismatch", "run_benchmark", "check_outputs_agree", "machine_info", "paper_reference",
           "DTYPES"]

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16, None)))  # auto: resolved per machine

# Default max |logit difference| between implementations. fp32 on CPU: the issue's 1e-4. CUDA
# convolutions may use TF32 even in "fp32", and autocast rounds to 8 (bf16) or 11 (fp16) bits.
_TOLERANCE = {("cpu", "fp32"): 1e-4, ("cuda", "fp32"): 5e-3, "bf16": 1e-1, "fp16": 2e-2}


class OutputMismatch(RuntimeError):
    """Two implementations given identical weights computed different outputs."""


@dataclass(frozen=True)
class BenchConfig:
    model: str = "convnext_tiny"
    batch_size: int = 16
    img_size: int = 224
    mode: str = "infer"  # "infer": forward only; "train": forward + backward + AdamW step
    dtype: str = "fp32"  # fp32; bf16 (ours bf16 end to end on CPU inference, else autocast); fp16; auto
    channels_last: bool = False  # convert every model and the input (ours is channels-last inside anyway)
    compile: bool = False  # torch.compile every implementation (default inductor backend)
    compare: tuple[str, ...] = ("timm", "torchvision")
    device: str = "cpu"
    warmup: int = 2  # untimed steps per implementation (the first includes compilation)
    repeats: int = 10  # timed rounds
    iters: int = 1  # steps per implementation per round
    tf32: bool = False  # allow TF32 matmuls/convs on CUDA (the paper's A100 setting)
    tolerance: float | None = None  # max |diff| of logits; None: the dtype's default
    optimize_ours: bool = False  # infer mode: apply `optimize_for_inference` to ours (layer scale folded once)
    cpu_paths: tuple[str, ...] | None = None  # CPU inference: fast_cpu_model's candidates (None: all)
    num_classes: int = 1000
    seed: int = 0
    # CPU: "kept" (convnext.memory.keep_freed_memory, what ours sets up) or "default" (the C library's);
    # process-wide either way, so every implementation of the run gets the same allocator.
    allocator: str = "kept"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        if self.optimize_ours and self.mode != "infer":
            raise ValueError("optimize_for_inference (--optimize-ours) applies to --mode infer only")
        if self.allocator not in ("kept", "default"):
            raise ValueError(f"allocator must be 'kept' or 'default', got {self.allocator!r}")
        if min(self.batch_size, self.img_size, self.repeats, self.iters) < 1 or self.warmup < 0:
            raise ValueError("batch_size, img_size, repeats and iters must be >= 1, warmup >= 0")

    @property
    def resolved_dtype(self) -> str:
        """fp32 / bf16 / fp16: "auto" decided by the CPU's features (`convnext.deploy.select_dtype`)."""
        if self.dtype != "auto":
            return self.dtype
        from ..deploy.features import select_dtype

        return select_dtype("auto", "cpu" if self.device == "cpu" else self.device)[0]

    @property
    def fast_cpu_path(self) -> bool:
        """Ours runs `convnext.deploy.fast_cpu_model`: CPU inference (in fp32 its exact fp32 paths, unless
        --optimize-ours asks for the model as built with `optimize_for_inference` only)."""
        if self.mode != "infer" or self.device != "cpu":
            return False
        return self.dtype in ("auto", "bf16") or (self.dtype == "fp32" and not self.optimize_ours)

    @property
    def default_tolerance(self) -> float:
        dtype = self.resolved_dtype
        if dtype == "fp32":
            return _TOLERANCE[("cuda" if self.device.startswith("cuda") else "cpu", "fp32")]
        return _TOLERANCE[dtype]


# ----------------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info(device: str = "cpu") -> dict:
    """What the figures were measured on: CPU, threads, load, GPU, library versions."""
    import torchvision

    info = {
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
    }
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        info["timm"] = None
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    else:
        from ..deploy.features import cpu_features

        from ..memory import freed_memory_kept

        info["cpu_features"] = cpu_features().describe()
        info["allocator"] = ("glibc, freed memory kept for reuse (convnext.memory)" if freed_memory_kept()
                             else "the C library's default")
    return info


# ------------------------------------------------------------------------------------ memory
class _PeakRSS:
    """Peak growth of the process's resident set size while the context is open (CPU memory).

    Sampled every `interval` seconds from /proc/self/statm by a background thread (the ops run
    outside the GIL), so short spikes can be missed; `peak_mib` is None where /proc is absent.
    """

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak_mib: float | None = None
        self._page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self._page

    def __enter__(self):
        try:
            self._base = self._rss()
        except OSError:
            self._base = None
            return self
        self._peak, self._stop = self._base, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, self._rss())
            time.sleep(self.interval)

    def __exit__(self, *exc):
        if self._base is not None:
            self._stop.set()
            self._thread.join()
            self._peak = max(self._peak, self._rss())
            self.peak_mib = (self._peak - self._base) / 2**20


def _peak_memory(step: Callable[[], None], device: torch.device) -> tuple[float | None, str]:
    """Peak memory of one step, in MiB, and what that number is."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        what = "CUDA max_memory_allocated (weights, optimizer state and activations)"
        return torch.cuda.max_memory_allocated(device) / 2**20, what
    with _PeakRSS() as rss:
        step()
    return rss.peak_mib, "CPU peak RSS growth during one step (sampled every 2 ms; excludes weights already resident)"


# ------------------------------------------------------------------------------------- steps
def _autocast(cfg: BenchConfig, device: torch.device):
    dtype = cfg.resolved_dtype
    if dtype == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[dtype])


def _make_step(model: nn.Module, cfg: BenchConfig, x: torch.Tensor, y: torch.Tensor, device: torch.device,
               own_precision: bool = False):
    """(step, forward): one benchmark step of `model`, a forward (infer) or forward + backward +
    AdamW (train), and the forward it calls (compiled with `cfg.compile`). A model that runs in its
    own precision (ours on the fast CPU path, ONNX Runtime, OpenVINO) is called as it is."""
    if own_precision:
        return (lambda: model(x)), model
    forward = torch.compile(model) if cfg.compile else model
    if cfg.mode == "infer":
        model.eval()

        def step() -> None:
            with torch.inference_mode(), _autocast(cfg, device):
                forward(x)

        return step, forward

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.dtype == "fp16")

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with _autocast(cfg, device):
            loss = F.cross_entropy(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step, forward


def _timed(step: Callable[[], None], iters: int, device: torch.device) -> float:
    """Seconds per step, averaged over `iters` back-to-back steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / iters


# -------------------------------------------------------------------------------- agreement
@torch.inference_mode()
def check_outputs_agree(
    impls: list[Implementation],
    x: torch.Tensor,
    tolerance: float,
    autocast: Callable = contextlib.nullcontext,
    forwards: dict[str, Callable] | None = None,
) -> dict[str, dict]:
    """Max |logit difference| of every peer against ours (the first implementation), in eval mode.

    `forwards` replaces a model's own forward (e.g. by its compiled version). Raises
    `OutputMismatch` naming the offending implementations when any exceeds `tolerance`.
    """
    outputs = {}
    for impl in impls:
        impl.model.eval()
        forward = (forwards or {}).get(impl.name, impl.model)
        with contextlib.nullcontext() if impl.own_precision else autocast():
            outputs[impl.name] = forward(x).float()
    ours = outputs[impls[0].name]
    report = {}
    for impl in impls[1:]:
        diff = (outputs[impl.name] - ours).abs().max().item()
        allowed = impl.tolerance if impl.tolerance is not None else tolerance
        report[impl.name] = {
            "max_abs_diff": diff,
            "max_abs_logit": ours.abs().max().item(),
            "argmax_agreement": (outputs[impl.name].argmax(-1) == ours.argmax(-1)).float().mean().item(),
            "tolerance": allowed,
            "ok": diff <= allowed,
        }
    bad = {k: v for k, v in report.items() if not v["ok"]}
    if bad:
        detail = ", ".join(f"{k}: max|diff| = {v['max_abs_diff']:.3g}, tolerance {v['tolerance']:.3g}"
                           for k, v in bad.items())
        raise OutputMismatch(f"outputs of ours and {', '.join(bad)} disagree with identical weights ({detail})")
    return report


# ------------------------------------------------------------------------------------- runner
def _summary(seconds: list[float], batch_size: int) -> dict:
    ms = sorted(s * 1e3 for s in seconds)
    median = statistics.median(ms)
    q1, _, q3 = statistics.quantiles(ms, n=4) if len(ms) > 1 else (ms[0], None, ms[0])
    return {
        "img_per_s": batch_size / (median / 1e3),
        "latency_ms": median,
        "latency_ms_min": ms[0],
        "latency_ms_max": ms[-1],
        "latency_ms_iqr": [q1, q3],
        "samples_ms": [s * 1e3 for s in seconds],
    }


def _resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available on this machine "
                         f"(torch {torch.__version__}, torch.cuda.is_available() is False); use cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda[:N], got {name!r}")
    return device


def _prepare(cfg: BenchConfig, device: torch.device, implementations: list[Implementation] | None,
             progress: bool) -> tuple[list[Implementation], dict[str, str], str | None]:
    """(implementations with ours first, skipped peers and why, ours' CPU path or None) for `cfg`."""
    skipped: dict[str, str] = {}
    runtimes = [n for n in cfg.compare if n in RUNTIMES]
    if implementations is None:
        implementations, skipped = build_implementations(
            cfg.model, [n for n in cfg.compare if n not in RUNTIMES], num_classes=cfg.num_classes, seed=cfg.seed
        )
    if runtimes:
        if device.type != "cpu" or cfg.mode != "infer":
            raise ValueError(f"--compare {','.join(runtimes)}: ONNX Runtime / OpenVINO / int8 are timed for CPU "
                             "inference only")
        built, why = build_runtimes(implementations[0].model, runtimes, cfg.img_size,
                                    in_chans=getattr(implementations[0].model, "in_chans", 3))
        implementations, skipped = [*implementations, *built], {**skipped, **why}
    ours_path = None
    if cfg.fast_cpu_path:
        from ..deploy.cpu import CANDIDATES, fast_cpu_model

        ours = implementations[0]
        candidates = ("compile",) if cfg.compile else cfg.cpu_paths
        if progress and (candidates is None or "compile" in candidates):
            tqdm.write(f"timing ours' {cfg.resolved_dtype} CPU paths ({', '.join(candidates or CANDIDATES)}; "
                       "compiling can take minutes)...", file=sys.stderr)
        fast = fast_cpu_model(ours.model, cfg.dtype, cfg.batch_size, cfg.img_size, candidates=candidates, inplace=True)
        ours_path = fast.describe()
        implementations[0] = Implementation(ours.name, fast, f"{ours.source} via convnext.deploy.fast_cpu_model "
                                            f"({fast.path})", own_precision=True)
        if cfg.resolved_dtype == "bf16":  # ours bf16 end to end vs the peers' bf16 autocast: both round
            for impl in implementations[1:]:
                if impl.name != "int8":  # int8 keeps its own bound
                    impl.tolerance = None  # the bf16 bound, also for fp32 runtimes
    elif cfg.optimize_ours:
        ours = implementations[0]
        optimize_for_inference(ours.model)
        ours.source += " + optimize_for_inference()"
    return implementations, skipped, ours_path


def _results_and_ratios(implementations: list[Implementation], samples: dict, first_call_s: dict, memory: dict,
                        batch_size: int) -> tuple[dict, dict]:
    """Per-implementation timing summary, and each peer's speed ratio to ours (the first)."""
    names = [impl.name for impl in implementations]
    results = {}
    for impl in implementations:
        results[impl.name] = {
            "source": impl.source,
            **_summary(samples[impl.name], batch_size),
            "first_call_s": first_call_s.get(impl.name),
            "peak_memory_mib": memory[impl.name][0],
        }
    ours = names[0]
    ratios = {}
    for name in names[1:]:
        per_round = [p / o for p, o in zip(samples[name], samples[ours])]
        ratios[name] = {
            "speedup_from_medians": results[name]["latency_ms"] / results[ours]["latency_ms"],
            "speedup_per_round_median": statistics.median(per_round),
            "speedup_per_round_min": min(per_round),
            "speedup_per_round_max": max(per_round),
        }
    return results, ratios


def run_benchmark(
    cfg: BenchConfig, *, progress: bool = True, implementations: list[Implementation] | None = None
) -> dict:
    """Run the benchmark described by `cfg` and return a JSON-serialisable report.

    Args:
        cfg: what to measure.
        progress: show a tqdm bar over all warm-up and timed steps.
        implementations: use these (ours first) instead of building `cfg.model` and its peers;
            tests pass a deliberately perturbed model here.
    """
    device = _resolve_device(cfg.device)
    if device.type == "cpu":  # process-wide, so every implementation timed here runs with it
        from ..memory import keep_default_allocator, keep_freed_memory

        if cfg.allocator == "kept":
            keep_freed_memory()
        else:
            keep_default_allocator()
    implementations, skipped, ours_path = _prepare(cfg, device, implementations, progress)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    for impl in implementations:
        if not impl.own_precision:
            impl.model.to(device=device, memory_format=memory_format)

    generator = torch.Generator().manual_seed(cfg.seed)
    x = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, generator=generator)
    x = x.to(device).contiguous(memory_format=memory_format)
    y = torch.randint(0, max(cfg.num_classes, 1), (cfg.batch_size,), generator=generator).to(device)

    tf32_before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    benchmark_before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True  # every implementation alike: cuDNN picks its fastest kernels
    try:
        tolerance = cfg.tolerance if cfg.tolerance is not None else cfg.default_tolerance
        for impl in implementations:  # a runtime in bf16 (OpenVINO's default on AMX) is held to the bf16 bound
            if impl.own_precision and impl.tolerance is None and impl is not implementations[0]:
                impl.tolerance = _TOLERANCE["bf16"]
        agreement = check_outputs_agree(implementations, x, tolerance, lambda: _autocast(cfg, device))
        load_before = list(os.getloadavg()) if hasattr(os, "getloadavg") else None

        names = [impl.name for impl in implementations]
        steps, forwards = {}, {}
        for impl in implementations:
            steps[impl.name], forwards[impl.name] = _make_step(impl.model, cfg, x, y, device, impl.own_precision)
        total = len(names) * (cfg.warmup + cfg.repeats * cfg.iters)
        bar = tqdm(total=total, desc=f"bench {cfg.model} {cfg.mode}", unit="step", disable=not progress)
        first_call_s = {}
        for name in names:  # warm-up; the first call includes compilation
            if cfg.compile:  # else the bar sits at 0 for minutes with no word why
                tqdm.write(f"compiling {name} (first call can take minutes)...", file=sys.stderr)
            for i in range(cfg.warmup):
                seconds = _timed(steps[name], 1, device)
                if i == 0:
                    first_call_s[name] = seconds
                bar.update(1)
        if cfg.compile and cfg.mode == "infer":  # the compiled graphs must agree too
            agreement_compiled = check_outputs_agree(
                implementations, x, tolerance, lambda: _autocast(cfg, device), forwards
            )
        samples: dict[str, list[float]] = {name: [] for name in names}
        for r in range(cfg.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order
                samples[name].append(_timed(steps[name], cfg.iters, device))
                bar.update(cfg.iters)
        bar.close()
        memory = {name: _peak_memory(steps[name], device) for name in names}
        load_after = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    finally:
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
            torch.backends.cudnn.benchmark = benchmark_before

    results, ratios = _results_and_ratios(implementations, samples, first_call_s, memory, cfg.batch_size)
    ours = names[0]
    report = {
        "config": {**asdict(cfg), "resolved_dtype": cfg.resolved_dtype},
        "ours_path": ours_path,
        "machine": machine_info(cfg.device),
        "load_avg_before_after": [load_before, load_after],
        "memory_measure": memory[ours][1],
        "agreement": agreement,
        **({"agreement_compiled": agreement_compiled} if cfg.compile and cfg.mode == "infer" else {}),
        "results": results,
        "ratios": ratios,
        "skipped": skipped,
    }
    reference = paper_reference(cfg)
    if reference:
        report["paper_reference_img_per_s"] = reference
    return report


def paper_reference(cfg: BenchConfig) -> dict:
    """The paper's img/s for this benchmark, or {}: it publishes inference throughput only, so a
    training-step benchmark has no reference."""
    reference = paper_throughput(cfg.model, cfg.img_size) if cfg.mode == "infer" else {}
    if not reference:
        return {}
    return {**reference,
            "note": "published by the paper's authors on their GPUs (batch size not stated); not measured here"}


def _floats(values: list[float] | None, digits: int = 2) -> str:
    """`[4.111, 3.3]` -> `4.11 3.30` (load averages and the like, for the report header)."""
    return "n/a" if values is None else " ".join(f"{v:.{digits}f}" for v in values)


def format_report(report: dict) -> str:
    """Human-readable table of a `run_benchmark` report."""
    cfg = report["config"]
    dtype = cfg["dtype"] if cfg.get("resolved_dtype", cfg["dtype"]) == cfg["dtype"] else \
        f"{cfg['dtype']} -> {cfg['resolved_dtype']}"
    how = "compiled" if cfg["compile"] else "ours: fastest CPU path, peers eager" if report.get("ours_path") else "eager"
    title = (
        f"{cfg['model']} | {cfg['mode']} | batch {cfg['batch_size']} | {cfg['img_size']}px | {dtype}"
        f"{' | channels_last' if cfg['channels_last'] else ''} | {how}"
        f" | {cfg['device']} ({report['machine'].get('gpu') or report['machine']['cpu']},"
        f" {report['machine']['torch_threads']} threads)"
    )
    lines = [
        title,
        f"load average (1, 5, 15 min): before {_floats(report['load_avg_before_after'][0])}, "
        f"after {_floats(report['load_avg_before_after'][1])}",
        *([f"CPU features: {report['machine']['cpu_features']}; allocator: {report['machine']['allocator']}"]
          if report["machine"].get("cpu_features") else []),
        *([f"ours: {report['ours_path']}"] if report.get("ours_path") else []),
    ]
    for name, a in report["agreement"].items():
        lines.append(f"outputs agree: ours vs {name}: max|diff| = {a['max_abs_diff']:.2e} "
                     f"(tolerance {a['tolerance']:g}, max|logit| {a['max_abs_logit']:.2f}, "
                     f"argmax agreement {a.get('argmax_agreement', 1.0):.0%})")
    header = f"{'impl':<12} {'img/s':>9} {'latency ms':>11} {'min..max ms':>19} {'peak MiB':>9} {'1st call s':>10}"
    lines += ["", header, "-" * len(header)]
    for name, r in report["results"].items():
        mem = f"{r['peak_memory_mib']:.0f}" if r["peak_memory_mib"] is not None else "-"
        first = f"{r['first_call_s']:.2f}" if r["first_call_s"] is not None else "-"
        lines.append(f"{name:<12} {r['img_per_s']:>9.2f} {r['latency_ms']:>11.1f} "
                     f"{r['latency_ms_min']:>9.1f}..{r['latency_ms_max']:<9.1f} {mem:>9} {first:>10}")
    lines.append(f"peak memory: {report['memory_measure']}")
    for name, r in report["ratios"].items():
        lines.append(f"speed-up ours / {name}: {r['speedup_per_round_median']:.3f}x (median of per-round ratios; "
                     f"range {r['speedup_per_round_min']:.3f}..{r['speedup_per_round_max']:.3f}), "
                     f"{r['speedup_from_medians']:.3f}x from median latencies")
    for name, why in report["skipped"].items():
        lines.append(f"skipped {name}: {why}")
    ref = report.get("paper_reference_img_per_s")
    if ref:
        gpus = ", ".join(f"{k} {v} img/s" for k, v in ref.items() if k != "note")
        lines.append(f"paper (different machine, for reference only): {gpus} - {ref['note']}")
    return "\n".join(lines)
