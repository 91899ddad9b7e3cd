"""Rerun the roadmap study (paper §2.1, Fig. 2) on any dataset: every step, one fixed recipe, several seeds.

Each (step, seed) is an ordinary training run of `convnext.train` in `OUTPUT/<step>/seed<k>/`, with
EMA off (the paper disables it for the BatchNorm models) and the small-input stem where the images
are small. A run whose `metrics.json` exists is reused, a partial one resumes from its last
checkpoint, so an interrupted experiment continues where it stopped. After every run the tables
and the chart are rewritten from everything finished so far.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm import tqdm

from ..models import build_model, count_flops, count_params, get_spec
from .results import StepResult, ladder, plot_roadmap, write_csv, write_markdown

__all__ = ["run_experiment", "SMALL_INPUT_MAX_SIZE"]

SMALL_INPUT_MAX_SIZE = 64  # images up to this side use the stride-1 stems (`RoadmapConfig.small_input`)


def _run_size(model_name: str, overrides: dict[str, Any], num_classes: int, img_size: int) -> tuple[float, float]:
    """Params (M) and MACs (M) of the network as trained."""
    config = dataclasses.replace(get_spec(model_name).config, num_classes=num_classes, **overrides)
    with torch.device("meta"):
        model = build_model(config)
    return count_params(model) / 1e6, count_flops(model, img_size) / 1e6


def _train_one(data: str, model_name: str, run_dir: Path, seed: int, overrides: dict[str, Any],
               train_kwargs: dict[str, Any]) -> dict[str, Any]:
    from ..train import TrainConfig, run

    cfg = TrainConfig(
        data=data, model=model_name, model_overrides=dict(overrides), ema=False, seed=seed, output=str(run_dir),
        resume="auto", progress=False, **train_kwargs,
    )
    return run(cfg)


def run_experiment(
    data: str,
    output: str | Path,
    *,
    regime: str = "r50",
    steps: Sequence[str] | None = None,
    seeds: int = 1,
    img_size: int = 32,
    small_input: bool | None = None,
    num_classes: int = 10,
    train_kwargs: dict[str, Any] | None = None,
    progress: bool = True,
) -> list[StepResult]:
    """Train every roadmap step of `regime` with one recipe and `seeds` seeds; write the results into `output`.

    Args:
        data: dataset for `convnext.train` (a folder, "digits" or "cifar10").
        output: experiment folder: one run folder per step and seed, plus results.csv/.md and roadmap.png.
        regime: "r50" (ResNet-50 -> ConvNeXt-T) or "r200" (ResNet-200 -> ConvNeXt-B).
        steps: step names to run (default: all 16), always run in ladder order.
        seeds: number of seeds per step (0..seeds-1).
        img_size: training/evaluation resolution.
        small_input: use the stride-1 stems; default: when img_size <= SMALL_INPUT_MAX_SIZE.
        num_classes: the dataset's classes (only for the params/MACs columns; the trainer sets the head).
        train_kwargs: the fixed recipe: further `TrainConfig` fields, identical for every run.
    Returns:
        one `StepResult` per step, with the top-1 of every seed.
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    if small_input is None:
        small_input = img_size <= SMALL_INPUT_MAX_SIZE
    overrides = {"small_input": True} if small_input else {}
    train_kwargs = dict(train_kwargs or {}, img_size=img_size)
    rows = ladder(regime, list(steps) if steps is not None else None)
    desc = (f"Dataset `{data}`, {img_size}x{img_size} images, small-input stems: {'yes' if small_input else 'no'}, "
            f"{seeds} seed(s) per step; fixed recipe: " + ", ".join(f"{k}={v}" for k, v in sorted(train_kwargs.items()))
            + ", ema=False.")
    (output / "experiment.json").write_text(json.dumps(
        dict(data=data, regime=regime, steps=[r.step for r in rows], seeds=seeds, model_overrides=overrides,
             train=train_kwargs), indent=2))

    runs = [(row, seed) for row in rows for seed in range(seeds)]
    bar = tqdm(runs, desc=f"roadmap {regime}", unit="run", disable=not progress, dynamic_ncols=True)
    for row, seed in bar:
        bar.set_postfix_str(f"{row.step} seed {seed}")
        model_name = f"roadmap_{regime}_{row.step}"
        run_dir = output / row.step / f"seed{seed}"
        metrics_path = run_dir / "metrics.json"
        if metrics_path.exists():
            metrics = json.loads(metrics_path.read_text())
        else:
            metrics = _train_one(data, model_name, run_dir, seed, overrides, train_kwargs)
        row.top1.append(float(metrics["top1"]))
        row.run_params_m, row.run_mflops = _run_size(model_name, overrides, num_classes, img_size)
        write_results(rows, output, regime, desc, data)
    return rows


def write_results(rows: list[StepResult], output: Path, regime: str, desc: str, data: str) -> None:
    """results.csv, results.md and roadmap.png from the rows finished so far."""
    target = "ConvNeXt-T" if regime == "r50" else "ConvNeXt-B"
    title = f"Modernization roadmap, ResNet-{regime[1:]} -> {target}, on {data}"
    write_csv(rows, output / "results.csv")
    write_markdown(rows, output / "results.md", title=title, run_desc=desc)
    plot_roadmap(rows, output / "roadmap.png", title=title, dataset=data)
