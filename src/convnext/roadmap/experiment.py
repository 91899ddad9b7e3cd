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
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from tqdm import tqdm

from ..models import build_model, count_flops, count_params, get_spec
from ..models.roadmap import roadmap_steps
from .results import StepResult, ladder, plot_roadmap, write_csv, write_markdown

__all__ = ["run_experiment", "resolve_recipe", "write_results", "estimate_seconds", "SMALL_INPUT_MAX_SIZE"]

SMALL_INPUT_MAX_SIZE = 64  # images up to this side use the stride-1 stems (`RoadmapConfig.small_input`)
# Fields every run sets itself: the recipe must not fix the network, its seed or its folder.
_PER_RUN = ("model", "model_overrides", "seed", "output", "resume", "ema", "progress", "finetune")
# Runtime settings that do not change what is trained: they may differ when an experiment is resumed.
_RUNTIME = ("threads", "num_workers", "device", "data_dir")


def resolve_recipe(data: str, recipe: str | None = None, overrides: dict[str, Any] | None = None):
    """The one training recipe shared by every run: TrainConfig defaults <- recipe <- overrides.

    `recipe` defaults to the shipped recipe named like the dataset (e.g. `digits`) when there is
    one. The recipe's model and model overrides are dropped: the roadmap sets those per step.
    """
    from ..train import TrainConfig, list_recipes, load_recipe

    if recipe is None and data in list_recipes():
        recipe = data
    values = {k: v for k, v in (load_recipe(recipe) if recipe else {}).items() if k not in _PER_RUN}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    overrides = dict(overrides or {})
    bad = sorted(set(overrides) - fields) + sorted(k for k in overrides if k in _PER_RUN)
    if bad:
        raise ValueError(f"training option(s) {', '.join(bad)}: unknown, or set per run by the roadmap itself")
    return TrainConfig(**{**values, **overrides, "data": data, "recipe": recipe, "ema": False})


def _step_overrides(model_name: str, small_input: bool, width_div: int) -> dict[str, Any]:
    """The network changes every run of the experiment applies to a registered roadmap step."""
    overrides: dict[str, Any] = {"small_input": True} if small_input else {}
    if width_div > 1:  # a list, as it is stored in the run's YAML config
        overrides["widths"] = [w // width_div for w in get_spec(model_name).config.widths]
    return overrides


def estimate_seconds(data: str, *, regime: str = "r50", steps: Sequence[str] | None = None, seeds: int = 1,
                     recipe: str | None = None, train_overrides: dict[str, Any] | None = None,
                     width_div: int = 1, probe_batch: int = 8) -> tuple[float, str]:
    """A rough wall-clock estimate of `run_experiment` with the same arguments, before it starts, and how it was made.

    Times a training step (forward, backward, AdamW; fastest of three) of the first step's network on a batch of
    `probe_batch` random images at the recipe's resolution, then scales it per image to every
    epoch of every run. Evaluation, data loading and the other steps' different costs are not in it.
    """
    template = resolve_recipe(data, recipe, train_overrides)
    from ..data import build_dataset

    images = len(build_dataset(data, "train", None, data_dir=template.data_dir))
    if template.train_subset:
        images = min(images, template.train_subset)
    names = [s.name for s in roadmap_steps(regime) if steps is None or s.name in steps]
    small_input = template.img_size <= SMALL_INPUT_MAX_SIZE
    config = dataclasses.replace(get_spec(f"roadmap_{regime}_{names[0]}").config, num_classes=10,
                                 **_step_overrides(f"roadmap_{regime}_{names[0]}", small_input, width_div))
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters())
    batch = min(probe_batch, template.batch_size)
    x, y = torch.randn(batch, 3, template.img_size, template.img_size), torch.randint(0, 10, (batch,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    step()  # warm-up: first-call allocations
    timings = []
    for _ in range(3):  # the fastest of three: other processes' load only ever adds time
        start = time.perf_counter()
        step()
        timings.append(time.perf_counter() - start)
    per_image = min(timings) / batch
    runs = len(names) * seeds
    seconds = per_image * images * template.epochs * runs
    how = (f"one training step of roadmap_{regime}_{names[0]} on {batch} images of {template.img_size}x"
           f"{template.img_size} took {per_image * batch:.3f} s; x {images} images x {template.epochs} epoch(s) "
           f"x {runs} runs ({len(names)} steps x {seeds} seed(s)); evaluation and data loading not included")
    return seconds, how


def _check_same_experiment(path: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume into a folder whose finished runs used another recipe or other networks."""
    if not path.exists():
        return
    before = json.loads(path.read_text())
    now = json.loads(json.dumps(settings, default=str))  # the same JSON normalisation as the stored file
    # Recipe fields are compared where both versions have them: a TrainConfig field added later is no conflict.
    old_recipe = before.get("recipe", {})
    differ = sorted(k for k in now if k != "recipe" and before.get(k) != now[k])
    differ += [f"recipe.{k}" for k in sorted(now["recipe"])
               if k in old_recipe and k not in _RUNTIME and old_recipe[k] != now["recipe"][k]]
    if differ:
        raise ValueError(f"{path.parent} holds an experiment with other settings ({', '.join(differ)}); "
                         "use a new --output, or the same settings to resume it")


def _run_size(model_name: str, overrides: dict[str, Any], num_classes: int, img_size: int) -> tuple[float, float]:
    """Params (M) and MACs (M) of the network as trained."""
    config = dataclasses.replace(get_spec(model_name).config, num_classes=num_classes, **overrides)
    with torch.device("meta"):
        model = build_model(config)
    return count_params(model) / 1e6, count_flops(model, img_size) / 1e6


def _num_classes(run_dir: Path) -> int:
    """The number of classes the trainer found, from the resolved config it wrote next to the run."""
    return int(yaml.safe_load((run_dir / "config.yaml").read_text())["resolved"]["num_classes"])


def run_experiment(
    data: str,
    output: str | Path,
    *,
    regime: str = "r50",
    steps: Sequence[str] | None = None,
    seeds: int = 1,
    recipe: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    small_input: bool | None = None,
    width_div: int = 1,
    keep_checkpoints: bool = False,
    progress: bool = True,
) -> list[StepResult]:
    """Train every roadmap step of `regime` with one recipe and `seeds` seeds; write the results into `output`.

    Args:
        data: dataset for `convnext.train` (a folder, "digits" or "cifar10").
        output: experiment folder: one run folder per step and seed, plus results.csv/.md and roadmap.png.
        regime: "r50" (ResNet-50 -> ConvNeXt-T) or "r200" (ResNet-200 -> ConvNeXt-B).
        steps: step names to run (default: all 16), always run in ladder order.
        seeds: number of seeds per step (0..seeds-1).
        recipe: training recipe (name or YAML path), see `resolve_recipe`.
        train_overrides: `TrainConfig` fields that override the recipe (epochs, batch_size, img_size, lr...).
        small_input: use the stride-1 stems; default: when img_size <= SMALL_INPUT_MAX_SIZE.
        width_div: train every step at its widths divided by this (1 = the registered networks). The
            same division at every step keeps each step's change (64 -> 96 becomes 16 -> 24 at 4);
            depths, kernels and layouts are untouched. For small-compute reruns.
        keep_checkpoints: keep the checkpoints of finished runs (by default they are deleted once
            metrics.json exists: one R50-size run leaves about 0.6 GB of weights and optimizer state).
        progress: show a progress bar over the runs.
    Returns:
        one `StepResult` per step, with the top-1 of every seed.
    """
    template = resolve_recipe(data, recipe, train_overrides)
    img_size = template.img_size
    if small_input is None:
        small_input = img_size <= SMALL_INPUT_MAX_SIZE
    if width_div < 1 or any(w % width_div for r in roadmap_steps(regime) for w in r.config.widths):
        raise ValueError(f"width_div must divide every step's widths (e.g. 1, 2, 4), got {width_div}")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    rows = ladder(regime, list(steps) if steps is not None else None)

    from ..train.config import config_to_dict

    recipe_dict = {k: v for k, v in config_to_dict(template).items() if k not in _PER_RUN}
    overrides = {"small_input": True} if small_input else {}  # stored as the experiment's network setting
    settings = dict(regime=regime, model_overrides=overrides, width_div=width_div, ema=False, recipe=recipe_dict)
    _check_same_experiment(output / "experiment.json", settings)
    (output / "experiment.json").write_text(json.dumps(
        dict(settings, steps=[r.step for r in rows], seeds=seeds), indent=2, default=str))
    shown = ("recipe", "epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "train_subset", "randaug",
             "mixup", "cutmix", "smoothing")
    desc = (f"Dataset `{data}` at {img_size}x{img_size}, small-input stems: {'yes' if small_input else 'no'}, "
            + (f"widths divided by {width_div}, " if width_div > 1 else "")
            + f"{seeds} seed(s) per step, EMA off. Recipe: " + ", ".join(f"{k}={recipe_dict[k]}" for k in shown)
            + " (all fields: experiment.json).")
    settings_line = (f"{data}, {img_size}x{img_size} px, "
                     + (f"widths / {width_div}, " if width_div > 1 else "full widths, ")
                     + f"{template.epochs} epochs, batch {template.batch_size}, lr {template.lr:g}, "
                     f"{seeds} seed(s) per step, EMA off")

    runs = [(row, seed) for row in rows for seed in range(seeds)]
    bar = tqdm(runs, desc=f"roadmap {regime}", unit="run", disable=not progress, dynamic_ncols=True)
    for row, seed in bar:
        bar.set_postfix_str(f"{row.step} seed {seed}")
        model_name = f"roadmap_{regime}_{row.step}"
        step_overrides = _step_overrides(model_name, small_input, width_div)
        run_dir = output / row.step / f"seed{seed}"
        metrics_path = run_dir / "metrics.json"
        if metrics_path.exists():  # finished earlier: reuse
            metrics = json.loads(metrics_path.read_text())
        else:  # new, or partial: the trainer resumes from run_dir/checkpoint-last.pt
            from ..train import run

            config = dataclasses.replace(template, model=model_name, model_overrides=step_overrides, seed=seed,
                                         output=str(run_dir), resume="auto", progress=False)
            metrics = run(config)
            if not keep_checkpoints:
                for ckpt in run_dir.glob("checkpoint-*.pt"):
                    ckpt.unlink()
        if metrics.get("top1") is None:
            raise ValueError(f"{metrics_path}: the run has no final evaluation (top1); delete {run_dir} to rerun it")
        row.top1.append(float(metrics["top1"]))
        row.run_params_m, row.run_mflops = _run_size(model_name, step_overrides, _num_classes(run_dir), img_size)
        write_results(rows, output, regime, desc, data, settings_line)
    return rows


def write_results(rows: list[StepResult], output: Path, regime: str, desc: str, data: str, settings: str = "") -> None:
    """results.csv, results.md and roadmap.png from the rows finished so far."""
    target = "ConvNeXt-T" if regime == "r50" else "ConvNeXt-B"
    title = f"Modernization roadmap, ResNet-{regime[1:]} -> {target}, on {data}"
    write_csv(rows, output / "results.csv")
    write_markdown(rows, output / "results.md", title=title, run_desc=desc)
    plot_roadmap(rows, output / "roadmap.png", title=title, dataset=data, settings=settings)
