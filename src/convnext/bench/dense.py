"""`convnext bench --model mask_rcnn_*|cascade_mask_rcnn_*|upernet_*`: inference img/s of a dense model.

At the resolution the paper counts its FLOPs (detectors 1280x800, UperNet 2048x512 or 2560x640), with
random weights (speed does not depend on them; a detector then keeps few boxes after its score
threshold, which makes its post-processing cheaper than with trained weights: said in the report).
Ours only: timm, torchvision and HF have no ConvNeXt detectors or segmenters to compare with.
"""
from __future__ import annotations

import statistics
import time

import torch

__all__ = ["run_dense_benchmark", "format_dense_report"]


def run_dense_benchmark(model: str, *, batch_size: int = 1, device: str = "cpu", dtype: str = "fp32",
                        warmup: int = 1, repeats: int = 3, size: tuple[int, int] | None = None,
                        progress: bool = True) -> dict:
    from tqdm import tqdm

    from ..devices import resolve_device
    from ..models import count_flops, create_model, get_spec
    from .runner import machine_info

    spec = get_spec(model)
    h, w = size or spec.flops_size
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = create_model(model, num_classes=spec.config.num_classes).eval().to(dev)
    if spec.task == "detection":
        x = [torch.rand(3, h, w, device=dev) for _ in range(batch_size)]
    else:
        x = torch.randn(batch_size, 3, h, w, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16 if dtype == "bf16" else torch.float16) \
        if dtype in ("bf16", "fp16") else torch.autocast(dev.type, enabled=False)

    def step() -> float:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        with torch.no_grad(), amp:
            net(x)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - t0

    bar = tqdm(total=warmup + repeats, desc=f"bench {model}", unit="step", disable=not progress)
    first = None
    for i in range(warmup):
        s = step()
        first = s if i == 0 else first
        bar.update(1)
    samples = []
    for _ in range(repeats):
        samples.append(step())
        bar.update(1)
    bar.close()
    with torch.device("meta"):
        gmacs = count_flops(create_model(model, num_classes=spec.config.num_classes), (h, w)) / 1e9
    median = statistics.median(samples)
    return {
        "model": model, "task": spec.task, "input_hw": [h, w], "batch_size": batch_size, "dtype": dtype,
        "device": str(dev), "machine": machine_info(str(dev)), "first_call_s": first,
        "latency_ms": 1000 * median, "img_per_s": batch_size / median, "samples_s": samples,
        "gmacs": gmacs, "paper_gmacs": spec.ref_gmacs,
        "note": ("random weights: the post-processing sees few boxes above the score threshold, so it is cheaper "
                 "than with trained weights" if spec.task == "detection" else "random weights (same speed as trained)"),
    }


def format_dense_report(r: dict) -> str:
    h, w = r["input_hw"]
    ref = f" (paper {r['paper_gmacs']:.0f})" if r.get("paper_gmacs") else ""
    return (f"{r['model']} ({r['task']}) at {w}x{h}, batch {r['batch_size']}, {r['dtype']}, {r['device']}: "
            f"{r['img_per_s']:.3g} img/s, {r['latency_ms']:.1f} ms per batch (median of {len(r['samples_s'])}), "
            f"{r['gmacs']:.1f} GMACs{ref}; first call {r['first_call_s']:.2f} s\n"
            f"ours only: timm, torchvision and HF have no ConvNeXt {r['task']} models to compare with. "
            f"Note: {r['note']}.")
