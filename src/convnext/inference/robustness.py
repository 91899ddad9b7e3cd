"""`convnext eval --benchmark`: the robustness evaluation of the paper's Table 8 (PAPER.md §4.3).

The models are "tested directly, with no extra modules or fine-tuning": the checkpoint's own
evaluation preprocessing (as `convnext eval`), top-1 per folder, then
- ImageNet-C: error E_{s,c} per corruption c and severity s; CE_c = mean_s E_{s,c} / AlexNet's mean
  error on c; mCE = mean of the 15 CE_c (x100). The unnormalised mean error is reported too.
- ImageNet-A / -R: the 1000-way logits are restricted to the benchmark's 200 classes before argmax.
- ImageNet-Sketch: plain 1000-class top-1.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data import eval_transform
from ..devices import resolve_device
from ..data.robustness import (
    ALEXNET_ERR, BENCHMARKS, CORRUPTIONS, PAPER_TABLE8, corruption_datasets, imagenet_wnids, subset_wnids,
    wnid_dataset,
)
from ..errors import CheckpointError, ConfigError, DataError
from ..train.distributed import DistInfo
from ..train.engine import evaluate
from ..train.trainer import make_eval_loader

__all__ = ["run_benchmark", "benchmark_checkpoint", "corruption_errors", "paper_row", "format_result"]

_PAPER_KEY = {"imagenet-c": "mCE", "imagenet-a": "A", "imagenet-r": "R", "imagenet-sketch": "Sketch"}  # in paper_row()


class _ClassSubset(nn.Module):
    """The model's logits at `indices` only: (B, 1000) -> (B, len(indices)), i.e. argmax within the subset."""

    def __init__(self, model: nn.Module, indices: list[int]):
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.tensor(indices), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.indices]


def corruption_errors(errors: dict[str, dict[int, float]]) -> dict:
    """mCE from top-1 errors (percent) per corruption and severity.

    Only corruptions with all 5 severities get a CE (a mean over fewer would not be comparable);
    mCE and the unnormalised mean error average those. Returns {"CE", "mCE", "mean_error", "complete"}.
    """
    complete = [c for c in CORRUPTIONS if len(errors.get(c, {})) == 5]
    mean_err = {c: sum(errors[c].values()) / 5 for c in complete}  # percent
    ce = {c: 100.0 * (mean_err[c] / 100.0) / ALEXNET_ERR[c] for c in complete}  # percent of AlexNet's error
    return {
        "CE": ce,
        "mCE": sum(ce.values()) / len(ce) if ce else None,
        "mean_error": sum(mean_err.values()) / len(mean_err) if mean_err else None,
        "complete": complete,
    }


def _missing_error(benchmark: str, root: Path, missing: list[str]) -> DataError:
    shown = ", ".join(missing[:8]) + (f" (+{len(missing) - 8} more)" if len(missing) > 8 else "")
    return DataError(f"--data {root}: {benchmark} is incomplete, missing {shown}; pass --partial to score what "
                     f"exists (the result is then marked partial)")


def run_benchmark(
    benchmark: str,
    model: nn.Module,
    data: str | Path,
    *,
    img_size: int = 224,
    crop_pct: float | None = None,
    batch_size: int = 100,
    num_workers: int = 2,
    amp: str = "off",
    device: str | torch.device | None = None,
    partial: bool = False,
    strict_images: bool = False,
    progress: bool = True,
) -> dict:
    """Score an ImageNet-1K classifier (1000-way logits in sorted-wnid order) on one robustness benchmark.

    Args:
        benchmark: one of `BENCHMARKS`.
        model: maps (B, 3, H, W) to (B, 1000) logits.
        data: the benchmark's root folder (layouts in `convnext.data.robustness`).
        partial: score the folders that exist instead of raising DataError for missing ones; the
            result then says `"partial": true` and lists them under `"missing"`.

    Returns percentages: for imagenet-c {"benchmark", "mCE", "mean_error", "CE", "errors", ...};
    otherwise {"benchmark", "top1", "error", "top5", ...}; both with "images", "partial", "missing".
    """
    if benchmark not in BENCHMARKS:
        raise ConfigError(f"--benchmark {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    root = Path(data).expanduser()
    transform = eval_transform(img_size, crop_pct=crop_pct)
    # Scan the whole layout first: a missing or misnamed folder fails before any image is scored.
    if benchmark == "imagenet-c":
        datasets, missing = corruption_datasets(root, transform, strict_images)
        head = model
    else:
        subset = subset_wnids(benchmark)
        classes = subset or imagenet_wnids()
        what = {"imagenet-a": "ImageNet-A", "imagenet-r": "ImageNet-R"}.get(benchmark, "ImageNet-1K")
        if not root.is_dir():
            raise DataError(f"--data {root}: no such folder; expected {root}/<wnid>/*.JPEG")
        ds, missing = wnid_dataset(root, transform, classes, what, strict_images)
        datasets = {benchmark: ds}
        # A dataset label is the wnid's position in `classes`, so the subset logits are indexed the same way.
        head = _ClassSubset(model, [imagenet_wnids().index(w) for w in subset]) if subset else model
    if missing and not partial:
        raise _missing_error(benchmark, root, missing)
    if not datasets:  # --partial with nothing at all to score
        raise DataError(f"--data {root} holds none of the 15 corruption folders ({', '.join(CORRUPTIONS[:3])}, ...); "
                        f"expected {root}/<corruption>/<severity 1-5>/<wnid>/*.JPEG")

    dev = resolve_device(device)
    head.to(dev)
    from tqdm import tqdm

    bar = tqdm(total=sum(len(d) for d in datasets.values()), desc=benchmark, unit="img", disable=not progress,
               leave=False)
    scores = {}
    for key, ds in datasets.items():
        if isinstance(key, tuple):
            bar.set_postfix_str(f"{key[0]}/{key[1]}")
        loader = make_eval_loader(ds, batch_size, num_workers, DistInfo(device=dev))
        scores[key] = evaluate(head, _counted(loader, bar), dev, amp)
    bar.close()

    common = {"images": sum(r["images"] for r in scores.values()),
              "skipped_images": sum(r["skipped_images"] for r in scores.values()),
              "partial": bool(missing), "missing": missing}
    if benchmark != "imagenet-c":
        r = scores[benchmark]
        return {"benchmark": benchmark, "top1": r["top1"], "error": 100.0 - r["top1"], "top5": r["top5"],
                "classes": len(classes), **common}
    errors: dict[str, dict[int, float]] = {}
    for (c, s), r in scores.items():
        errors.setdefault(c, {})[s] = 100.0 - r["top1"]
    agg = corruption_errors(errors)
    return {"benchmark": benchmark, "mCE": agg["mCE"], "mean_error": agg["mean_error"], "CE": agg["CE"],
            "errors": {c: {str(s): e for s, e in sorted(errors[c].items())} for c in CORRUPTIONS if c in errors},
            "corruptions_in_mCE": len(agg["complete"]), **common}


def _counted(loader, bar):
    for images, targets, skipped in loader:
        bar.update(len(targets) + skipped)
        yield images, targets, skipped


def paper_row(model_name: str | None, checkpoint: str | Path, img_size: int) -> tuple[dict | None, str]:
    """(the paper's Table 8 row for this model as a dict, how it was matched / why there is none).

    An official file name gives model, pre-training data and resolution exactly; any other
    checkpoint is matched by model name and evaluation resolution (1K at 224, 22K at 384: the
    only ConvNeXt rows in the table).
    """
    from ..weights.pretrained import pretrained_for_file

    entry = pretrained_for_file(checkpoint)
    if entry is not None:
        key = (entry.model, "22k" if entry.tag.startswith("in22k") else "1k", entry.resolution)
        how = f"official file {Path(checkpoint).name}"
    else:
        matches = [k for k in PAPER_TABLE8 if k[0] == model_name and k[2] == img_size]
        key = matches[0] if len(matches) == 1 else None
        how = f"matched by model {model_name} at {img_size}px"
    row = PAPER_TABLE8.get(key) if key else None
    if row is None:
        return None, f"the paper's Table 8 has no row for {model_name or 'this model'} at {img_size}px"
    return {"row": row.label, "clean": row.clean, "mCE": row.mce, "C_bar": row.c_bar, "A": row.a, "R": row.r,
            "Sketch": row.sketch}, how


def benchmark_checkpoint(
    benchmark: str,
    checkpoint: str | Path,
    data: str | Path,
    *,
    weights: str = "auto",
    model_name: str | None = None,
    img_size: int | None = None,
    crop_pct: float | None = None,
    **kwargs,
) -> dict:
    """`run_benchmark` on a checkpoint loaded as `convnext eval` does, with the paper's row beside it.

    `kwargs` go to `run_benchmark` (batch_size, num_workers, amp, device, partial, strict_images, progress).
    """
    from ..weights.loading import match_model_name
    from .loaded import load

    if benchmark not in BENCHMARKS:  # before loading a possibly large checkpoint
        raise ConfigError(f"--benchmark {benchmark!r}: expected one of {', '.join(BENCHMARKS)}")
    loaded = load(checkpoint, weights=weights, model_name=model_name, img_size=img_size, crop_pct=crop_pct)
    if loaded.task != "classification":
        raise CheckpointError(f"--checkpoint {checkpoint}: a {loaded.task} model; the robustness benchmarks "
                              f"score ImageNet-1K classifiers")
    model = loaded.model
    num_classes = getattr(model, "num_classes", None)
    if num_classes != 1000:
        raise CheckpointError(f"--checkpoint {checkpoint}: a {num_classes}-class model; the robustness benchmarks "
                              f"score ImageNet-1K classifiers (1000 classes)")
    labels = loaded.classes if loaded.labels_stored else None
    if labels is not None and tuple(labels) != imagenet_wnids():
        raise CheckpointError(f"--checkpoint {checkpoint}: its 1000 labels are not the ImageNet-1K wnids in sorted "
                              f"order (first: {labels[0]})")
    img_size, crop_pct = loaded.img_size, loaded.crop_pct
    res = run_benchmark(benchmark, model, data, img_size=img_size, crop_pct=crop_pct, **kwargs)
    name = model_name or (match_model_name(model.config) if hasattr(model, "config") else None)
    paper, how = paper_row(name, checkpoint, img_size)
    return {**res, "checkpoint": str(checkpoint), "model": name, "weights": loaded.weights, "img_size": img_size,
            "paper": paper, "paper_match": how}


def format_result(res: dict) -> str:
    """The result as a plain-text table, with the paper's value beside ours where it has one."""
    lines = [f"{res['benchmark']}: {res.get('checkpoint', 'model')} ({res.get('model') or 'unknown model'}, "
             f"{res.get('img_size', '?')}px), {res['images']} images"
             + (f", {res['skipped_images']} unreadable skipped" if res["skipped_images"] else "")]
    paper = res.get("paper")
    if res["benchmark"] == "imagenet-c":
        lines.append(f"{'corruption':<18}" + "".join(f"{'s' + str(s):>7}" for s in range(1, 6)) + f"{'CE':>8}")
        for c, errs in res["errors"].items():
            cells = "".join(f"{errs[str(s)]:>7.2f}" if str(s) in errs else f"{'-':>7}" for s in range(1, 6))
            ce = res["CE"].get(c)
            lines.append(f"{c:<18}{cells}{'-' if ce is None else f'{ce:.2f}':>8}")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        n = res["corruptions_in_mCE"]
        lines.append(f"mCE (normalised by AlexNet, {n}/15 corruptions): {fmt(res['mCE'])}"
                     + (f"   paper ({paper['row']}): {paper[_PAPER_KEY['imagenet-c']]}" if paper else ""))
        c_bar = f"   (the paper's C-bar, {paper['C_bar']}, is ImageNet-C-bar, another dataset)" if paper else ""
        lines.append(f"mean corruption error (unnormalised): {fmt(res['mean_error'])}{c_bar}")
        lines.append("(errors are top-1 error %, CE is % of AlexNet's error; lower is better)")
    else:
        col = _PAPER_KEY[res["benchmark"]]
        lines.append(f"top-1 {res['top1']:.2f}%  (error {res['error']:.2f}%) over {res['classes']} classes"
                     + (f"   paper ({paper['row']}): {paper[col]}" if paper else ""))
    if paper is None and "paper_match" in res:
        lines.append(res["paper_match"])
    elif paper is not None:
        lines.append(f"paper row {paper['row']} ({res['paper_match']})")
    if res["partial"]:
        lines.append(f"PARTIAL result: missing {', '.join(res['missing'])}")
    return "\n".join(lines)


def cmd_benchmark(args) -> int:
    """`convnext eval --benchmark NAME ...` (called from `convnext.inference.cli`): table on stdout, optional JSON."""
    import json

    from ..errors import UserError

    try:
        res = benchmark_checkpoint(
            args.benchmark, args.checkpoint, args.data, weights=args.weights, model_name=args.model,
            img_size=args.img_size, crop_pct=args.crop_pct, batch_size=args.batch_size or 100, num_workers=args.num_workers,
            amp=args.amp, device=args.device, partial=args.partial, strict_images=args.strict_images,
            progress=args.progress,
        )
    except ValueError as e:  # DataError / CheckpointError / ConfigError, or a plain ValueError from loading
        raise UserError(str(e)) from None
    print(format_result(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)  # the path was checked before any work
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0
