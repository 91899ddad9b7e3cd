"""`run(config)`: one whole training run, the code path of `convnext train`, for every task.

Read `fit` first: setup (`_resume_from`, `_adapt`, `_build`, `_restore`, `_open_run_folder`), then the
loop over epochs (`_train_epoch`, `_end_epoch`), then `_finish`. The task (`tasks.py`; detection and
segmentation register theirs from the dense package) supplies data, model, loss, training loader and
evaluator; this module owns everything else: the run folder and its lock, resume, the optimizer and
schedule, AMP, accumulation, DDP/FSDP, EMA, logging and checkpoints (layout: `checkpoint.py`). It
leaves config.yaml, metrics.json, checkpoint-last.pt, checkpoint-best.pt, tensorboard/ and curves.png
in the run folder. Ctrl-C and SIGTERM save where the run stands (`interrupts.py`), bit-identically
resumable, whether they land in a batch, the epoch-end evaluation or a checkpoint write.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from ..data.datasets import worker_context
from ..errors import CheckpointError, ConfigError, DataError, UserError
from ..models import config_to_dict as model_config_to_dict
from ..models import count_params
from .adapt import adapt_config
from .checkpoint import (
    Position,
    best_state,
    buffers_of,
    load_training_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    training_state,
    unwrap_model,
    write_atomic,
)
from .config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    given_fields,
    recipe_keys,
    replace_config,
    save_config_yaml,
)
from .distributed import DistInfo, SeededSamples, ShardSampler, TrainSampler, barrier, init_distributed, wrap_model
from .engine import ModelEMA, NonFiniteLossError, StepContext, train_one_epoch
from .interrupts import Interrupts
from .rundir import RunLock, check_run_folder, clear_leftovers, clear_run
from .schedule import make_schedule, scaled_lr, steps_per_epoch, warmup_steps_of
from .tasks import Task, TaskData, get_task, task_of_model

__all__ = ["run", "fit", "default_output", "make_eval_loader", "resolve_resume", "History", "SAFE_TO_CHANGE_ON_RESUME"]

# Options a resumed run may change: they alter how the run executes, not what it computes.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "resume", "output", "overwrite", "progress", "num_workers", "threads", "device", "data_dir", "eval_every",
    "strict_images", "compile", "grad_checkpointing", "deterministic", "adapt",
})
_INVOCATION = ("resume", "output", "overwrite")  # name this invocation, not the run: never recorded as changes
SMALL_DATA = 5000  # from scratch on fewer training images, the ImageNet recipe rarely leaves chance


def default_output(config: TrainConfig) -> Path:
    data = config.data if config.data in ("digits", "cifar10", "cifar100") else Path(config.data).name
    recipe = Path(config.recipe).stem if config.recipe else None  # a user's `x/mine.yaml` names the folder `mine`
    return Path("runs") / f"{recipe or data}-{config.model}"


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()  # visible at once in log files (SLURM, nohup), not at exit


def make_eval_loader(dataset, batch_size: int, num_workers: int, info: DistInfo, collate=None) -> DataLoader:
    if collate is None:
        from ..data import collate_skip_bad as collate
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(dataset, info.rank, info.world_size),
        num_workers=num_workers, collate_fn=collate, pin_memory=info.device.type == "cuda",
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class _Loader:
    """A loader that remembers its running iterator, so an interrupt can stop its worker processes.

    After a SIGTERM to the process group the workers are dead; DataLoader would report that (its
    SIGCHLD handler) whenever the iterator is next touched or garbage-collected, as a traceback.
    `close()` shuts them down first (inside `Interrupts.deferred`, where SIGCHLD is held off).
    """

    def __init__(self, loader):
        self.loader, self.iterator = loader, None

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        if isinstance(self.loader, DataLoader) and self.loader.num_workers:  # fork, or spawn beside DALI
            self.loader.multiprocessing_context = worker_context(self.loader.num_workers)
        self.iterator = iter(self.loader)
        return self.iterator

    @property
    def dataset(self):
        return self.loader.dataset

    def close(self) -> None:
        shutdown = getattr(self.iterator, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()
        self.iterator = None


@dataclass
class History:
    """The per-epoch records of a run and its best epoch (rebuilt from a checkpoint's metrics on resume)."""

    primary: str  # the task's metric that picks checkpoint-best.pt (higher is better)
    records: list[dict] = field(default_factory=list)
    best_value: float | None = None
    best_epoch: int | None = None
    last_eval: dict | None = None  # the latest evaluation (the final one at the end)

    @classmethod
    def from_metrics(cls, primary: str, saved: dict) -> "History":
        last = saved.get("final")  # resuming a finished run reports its final evaluation
        if last is None and saved.get("top1") is not None:  # checkpoints written before "final" existed
            last = {"top1": saved["top1"], "top5": saved.get("top5")}
        return cls(primary, list(saved.get("history", [])), saved.get(f"best_{primary}"), saved.get("best_epoch"), last)

    def add(self, record: dict, evaluation: dict | None) -> bool:
        """Append an epoch's record; True when its primary metric is a new best."""
        self.records.append(record)
        if evaluation is not None:
            self.last_eval = evaluation
        value = record.get(self.primary)
        improved = value is not None and (self.best_value is None or value > self.best_value)
        if improved:
            self.best_value, self.best_epoch = value, record["epoch"]
        return improved


@dataclass
class Run:
    """The parts of one training run, built once by `_build`; the loop reads them."""

    config: TrainConfig
    info: DistInfo
    task: Task
    data: TaskData
    out: Path
    adapted: list[str]
    requested: dict  # the config as asked for, before adaptation (what a resume is compared with)
    train_ds: SeededSamples
    sampler: TrainSampler
    model: nn.Module  # the plain module: checkpoints, EMA
    wrapped: nn.Module  # under DDP/FSDP: the one that trains and evaluates
    train_model: nn.Module  # `wrapped`, compiled with --compile
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    lr_at: Callable[[int], float]
    peak_lr: float
    warmup_steps: int
    steps_per_epoch: int
    effective_batch: int
    train_loader: _Loader
    loader_kind: str
    loader_rng: torch.Generator
    val_loader: _Loader | None
    writer: Any = None
    bar: Any = None
    saved: str = ""  # what the last save wrote, for the interrupt message

    @property
    def fsdp(self) -> bool:
        return self.config.fsdp and self.info.enabled

    @property
    def total_steps(self) -> int:
        return self.config.epochs * self.steps_per_epoch

    @property
    def reported(self) -> str:
        return "ema" if self.ema is not None else "model"


def resolve_resume(config: TrainConfig, saved: dict, explicit: frozenset[str] | None,
                   requested: dict | None = None) -> tuple[TrainConfig, dict]:
    """The config of a resumed run and the safe changes it makes to the saved one.

    Options the user did not set are taken from the checkpoint (`explicit` names the ones set; None
    means all of them). A set option that differs from the run's and is not in SAFE_TO_CHANGE_ON_RESUME
    is refused: resuming with another --lr, --epochs or --model would silently train something else.
    """
    old = config_from_dict(saved)
    new = config_to_dict(config)
    # Compare with what the first run was asked for (before `adapt_config`), so repeating the same
    # command, or the same `run(config)`, resumes; the result keeps the run's adapted values.
    before = config_to_dict(config_from_dict(requested)) if requested is not None else config_to_dict(old)
    given = set(new) if explicit is None else set(explicit)
    unsafe, changes = [], {}
    for key in new:
        if key not in given or new[key] == before.get(key):
            continue
        if key in SAFE_TO_CHANGE_ON_RESUME:
            changes[key] = new[key]
        else:
            unsafe.append(f"--{key.replace('_', '-')} {before.get(key)!r} -> {new[key]!r}")
    if unsafe:
        raise ConfigError(
            f"--resume: this run was started with other settings ({'; '.join(unsafe)}); resume with the run's "
            "settings (omit those flags), or start a new run with another --output"
        )
    return replace_config(old, **changes), changes


def run(config: TrainConfig, explicit: frozenset[str] | set[str] | None = None) -> dict:
    """Train `config` to the end (or resume it) and return the metrics written to metrics.json.

    The same function serves one CPU process and every rank under torchrun. Only the options the
    user did not set may be adapted to the data (`adapt.py`) or taken from a resumed checkpoint; the
    set ones are the fields given to `TrainConfig(...)` / `load_config(...)` (flags, the keys of the
    user's own YAML), plus `explicit`. Raises the typed errors of `convnext.errors` for unusable input,
    NonFiniteLossError when the loss diverges, KeyboardInterrupt after saving on Ctrl-C or SIGTERM.
    """
    info = init_distributed(config.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _run(config, info, given_fields(config) | frozenset(explicit or ()))
    finally:
        torch.use_deterministic_algorithms(deterministic)  # --deterministic holds for this run only
        if info.enabled and os.environ.get("CONVNEXT_KEEP_PROCESS_GROUP") is None:
            from .distributed import cleanup_distributed

            cleanup_distributed()


def _resume_path(config: TrainConfig, out: Path) -> Path | None:
    """The checkpoint to resume: --resume FILE, or for `auto` checkpoint-last.pt (else a resumable
    checkpoint-best.pt, written by older versions before the last one); None to start afresh."""
    if config.resume not in (None, "auto"):
        return Path(config.resume)  # a missing file fails when it is read
    if config.resume is None:
        return None
    last, best = out / "checkpoint-last.pt", out / "checkpoint-best.pt"
    if last.is_file():
        return last
    if best.is_file():
        try:
            load_training_checkpoint(best)
        except CheckpointError:
            raise CheckpointError(f"--resume auto: {out} holds no checkpoint-last.pt, and its checkpoint-best.pt "
                                  "holds weights only; start from them with --finetune, or pass --overwrite") from None
        return best
    return None


def _run(config: TrainConfig, info: DistInfo, explicit: frozenset[str]) -> dict:
    out = Path(config.output) if config.output else default_output(config)
    if config.finetune is not None and not Path(config.finetune).exists():
        raise ConfigError(f"--finetune {config.finetune}: no such file or folder")
    if info.is_main:
        check_run_folder(out, resuming=config.resume is not None, overwrite=config.overwrite)
    # Rank 0 holds the folder's lock for the whole run; other ranks never write into it.
    with RunLock(out) if info.is_main else contextlib.nullcontext():
        resume_path = _resume_path(config, out)
        if info.is_main:
            removed = clear_run(out) if config.overwrite and resume_path is None else clear_leftovers(out)
            if removed:
                why = "--overwrite" if config.overwrite else "no checkpoint was saved in this folder"
                _log(info, f"{why}: removed the previous run's {', '.join(removed)} from {out}")
            for tmp in remove_stale_temporaries(out):
                _log(info, f"removed {tmp.name}, left by a save that was killed")
        return fit(config, info, explicit, out, resume_path)


def fit(config: TrainConfig, info: DistInfo, explicit: frozenset[str], out: Path, resume_path: Path | None) -> dict:
    """The training run: set up (or restore) every part, train epoch by epoch, report."""
    t_start = time.perf_counter()
    ckpt, config, changes = _resume_from(config, explicit, resume_path)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    task = get_task(config.task or task_of_model(config.model))
    data = task.build_data(config)
    for note in data.notes:
        _log(info, note)
    requested = ckpt.get("requested_config", ckpt["train_config"]) if ckpt else config_to_dict(config)
    config, adapted = _adapt(config, info, explicit, data) if ckpt is None else (config, [])
    if config.threads:
        torch.set_num_threads(config.threads)
    r = _build(config, info, task, data, out, ckpt, adapted, requested)
    hist = History.from_metrics(task.primary, ckpt["metrics"] if ckpt else {})
    pos = _restore(r, ckpt, changes)
    _open_run_folder(r, ckpt, changes, pos, hist)
    _say_what_runs(r, pos, fresh=ckpt is None)

    from tqdm import tqdm

    # The bar goes to stderr, the epoch lines and the final result to stdout, so `> log` keeps a clean
    # record; redirected to a file, the bar refreshes every 30 s instead of flooding it.
    r.bar = tqdm(total=r.total_steps, initial=pos.step, unit="step", dynamic_ncols=True, file=sys.stderr,
                 mininterval=0.1 if sys.stderr.isatty() else 30.0, disable=not (config.progress and info.is_main))
    with Interrupts() as interrupts:
        try:
            if pos.pending_record is not None:  # an interrupted evaluation: run it before training on
                _end_epoch(r, hist, pos, pos.pending_record, interrupts)
            for epoch in range(pos.epoch, config.epochs):
                record = _train_epoch(r, hist, pos, epoch, interrupts)
                _end_epoch(r, hist, pos, record, interrupts)
        except KeyboardInterrupt:
            _interrupted(r, hist, interrupts)
            raise
        except NonFiniteLossError as e:
            last = out / "checkpoint-last.pt"
            kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
            raise NonFiniteLossError(
                f"{e}; stopping, {kept} (try a lower --lr, --clip-grad 1.0, or --amp bf16 instead of fp16)"
            ) from None
        finally:
            r.bar.close()
            if r.writer is not None:
                r.writer.close()
        return _finish(r, hist, t_start, interrupts)


# ---- setup ----------------------------------------------------------------------------------------

def _resume_from(config: TrainConfig, explicit: frozenset[str], path: Path | None):
    """(checkpoint or None, the run's config with only safe changes, those changes)."""
    if path is None:
        return None, config, {}
    ckpt = load_training_checkpoint(path)
    requested = ckpt.get("requested_config", ckpt["train_config"])
    config, changes = resolve_resume(config, ckpt["train_config"], explicit, requested)
    if ckpt["model_name"] != config.model:
        raise CheckpointError(f"--resume: checkpoint is a {ckpt['model_name']} run, but --model is {config.model}")
    return ckpt, config, changes


def _adapt(config: TrainConfig, info: DistInfo, explicit: frozenset[str], data: TaskData):
    """Adapt the defaults that cannot make sense for this run, and say so (never on resume: already done).

    What the user set stays as written; so do a shipped recipe's values, but for a warm-up longer than
    a quarter of the run (written for the recipe's data set, it would never end on a small one).
    """
    fixed = set(explicit) | (recipe_keys(config.recipe) - {"warmup_epochs", "warmup_steps"})
    config, adapted = adapt_config(config, num_train=len(data.train), world_size=info.world_size,
                                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")), explicit=fixed)
    for note in adapted:
        _log(info, f"adapted: {note}")
    return config, adapted


def _build(config: TrainConfig, info: DistInfo, task: Task, data: TaskData, out: Path, ckpt: dict | None,
           adapted: list[str], requested: dict) -> Run:
    """Sampler, model (+ resumed weights, EMA, SyncBN, DDP/FSDP, compile), optimizer, schedule, loaders."""
    device = info.device
    if device.type == "cpu":
        from ..memory import keep_freed_memory

        keep_freed_memory()  # large activations reused from the heap, not faulted in every step
    # Augmentation in workers seeded per (seed, epoch, image): exact mid-epoch resume with workers too.
    train_ds = SeededSamples(data.train, config.seed)
    sampler = TrainSampler(train_ds, config.batch_size, info.rank, info.world_size, seed=config.seed,
                           drop_last=config.drop_last, multiple=data.pair_multiple)
    if sampler.batches_per_epoch < config.accum_steps or sampler.batches_per_epoch == 0:
        raise DataError(
            f"{len(train_ds)} training images do not fill one optimizer step of "
            f"{config.batch_size} x {info.world_size} device(s) x {config.accum_steps} accumulation steps; "
            f"lower --batch-size or --accum-steps"
        )
    if sampler.dropped_per_epoch:
        _log(info, f"drop_last: {sampler.dropped_per_epoch} of {len(train_ds)} images (a different set each epoch) "
             "do not fill the last batch and are left out, as in the official recipe (--no-drop-last keeps them)")
    model, ema, wrapped, groups = _build_model(config, info, task, data, ckpt)
    # Compiled training steps; checkpoints and evaluation keep using the uncompiled module (same parameters).
    # dynamic=False: a new input shape (a short last batch) recompiles a static graph rather than
    # switching to symbolic shapes, which inductor does not always handle in these kernels.
    train_model = torch.compile(wrapped, dynamic=False) if config.compile else wrapped
    effective_batch = config.batch_size * info.world_size * config.accum_steps
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.base_lr, effective_batch, config.lr_base_batch)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=config.betas, eps=config.eps)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    spe = steps_per_epoch(sampler.batches_per_epoch, config.accum_steps, config.drop_last)
    lr_at, warmup = make_schedule(config, peak_lr=peak_lr, steps_per_epoch=spe)
    # The loader draws its worker base seed from this generator, not from the global RNG, and it is
    # re-seeded from (seed, rank, epoch) every epoch: resuming never shifts the global random stream.
    # Inside workers, `SeededSamples` then reseeds per image, so batches may change workers on resume.
    loader_rng = torch.Generator()
    train_loader, kind = task.train_loader(config, data, train_ds, sampler, device, loader_rng)
    val_loader = (_Loader(make_eval_loader(data.val, data.eval_batch_size or config.batch_size, config.num_workers,
                                           info, data.collate_eval)) if data.val is not None else None)
    return Run(config, info, task, data, out, adapted, requested, train_ds, sampler, model, wrapped, train_model,
               ema, optimizer, scaler, lr_at, peak_lr, warmup, spe, effective_batch, _Loader(train_loader), kind,
               loader_rng, val_loader)


def _build_model(config: TrainConfig, info: DistInfo, task: Task, data: TaskData, ckpt: dict | None):
    """(plain model, EMA, DDP/FSDP-wrapped model, optimizer groups), weights from the checkpoint if resuming."""
    _seed_everything(config.seed)  # identical initial weights on every rank (and for the EMA copy)
    model = task.build_model(config, data)
    if ckpt is None and (config.pretrained or config.finetune):
        _log(info, task.load_initial_weights(model, config))
    _seed_everything(config.seed + info.rank)  # then per-rank streams for augmentation and drop path
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(info.device)
    if ckpt is not None:  # weights go in before DDP/FSDP wrapping (FSDP then shards them)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"--resume: weights do not fit {config.model} ({str(e).splitlines()[0]})") from None
    ema = ModelEMA(model, config.ema_decay) if config.ema else None
    if ema is not None and ckpt is not None and "model_ema" in ckpt:
        ema.module.load_state_dict(ckpt["model_ema"])
    fsdp = config.fsdp and info.enabled
    if ema is not None and fsdp:
        raise ConfigError("--ema with --fsdp is not supported: the EMA would need the full weights on every rank")
    if task.sync_batchnorm and info.enabled and info.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = task.param_groups(model, config)
    wrapped = wrap_model(model, info, fsdp=config.fsdp)
    if fsdp:  # FSDP re-creates parameters: regroup them by name
        by_name = dict(wrapped.named_parameters())
        for g in groups:
            g["params"] = [by_name[n] for n in g["names"]]
    return model, ema, wrapped, groups


def _restore(r: Run, ckpt: dict | None, changes: dict) -> Position:
    """Optimizer, scaler and RNG state of a resumed run; the position it continues from."""
    if ckpt is None:
        return Position()
    if r.fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(r.wrapped, r.optimizer, ckpt["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        r.optimizer.load_state_dict(ckpt["optimizer"])
    if r.scaler is not None and ckpt.get("scaler"):
        r.scaler.load_state_dict(ckpt["scaler"])
    pos = Position(ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"],
                   pending_record=ckpt.get("pending_record"))
    if r.info.rank == 0:
        set_rng_state(ckpt["rng"])
    else:
        _seed_everything(r.config.seed + r.info.rank + 1000 * pos.epoch)
    _log(r.info, f"resumed from epoch {pos.epoch}" + (f", batch {pos.batch_in_epoch}" if pos.batch_in_epoch else "")
         + f" (optimizer step {pos.step})"
         + (f"; evaluating epoch {pos.epoch} first" if pos.pending_record is not None else "")
         + "".join(f"; --{k.replace('_', '-')} now {v!r}" for k, v in changes.items() if k not in _INVOCATION))
    return pos


def _open_run_folder(r: Run, ckpt: dict | None, changes: dict, pos: Position, hist: History) -> None:
    """config.yaml (the first config is never lost: a resume appends its changes), TensorBoard; on a
    resume whose last checkpoint is the best epoch, checkpoint-best.pt is (re)written from it, in case a
    kill came between the two writes of that epoch."""
    if not r.info.is_main:
        return
    out = r.out
    out.mkdir(parents=True, exist_ok=True)
    resolved = {"output": str(out), "world_size": r.info.world_size, "effective_batch": r.effective_batch,
                "lr": r.peak_lr, "warmup_steps": r.warmup_steps, "total_steps": r.total_steps,
                "num_classes": len(r.data.classes), "task": r.task.name, "adapted": r.adapted}
    if ckpt is None or not (out / "config.yaml").exists():
        save_config_yaml(r.config, out / "config.yaml", extra=resolved)
    elif recorded := {k: v for k, v in changes.items() if k not in _INVOCATION}:
        _append_resume(out / "config.yaml", pos.epoch, recorded)
    if ckpt is not None and hist.best_epoch is not None and hist.best_epoch == ckpt["epoch"] and not pos.batch_in_epoch:
        save_checkpoint(best_state({k: v for k, v in ckpt.items() if k != "format"}), out / "checkpoint-best.pt")
    from torch.utils.tensorboard import SummaryWriter

    r.writer = SummaryWriter(str(out / "tensorboard"))


def _say_what_runs(r: Run, pos: Position, fresh: bool) -> None:
    """The run in one line, how its lr was reached, and (once, on a fresh run) what will not work."""
    c, info = r.config, r.info
    _log(info, f"{c.model} ({count_params(r.model) / 1e6:.2f} M params, {r.task.name}) on {c.data}: "
         f"{len(r.train_ds)} train / {len(r.data.val) if r.data.val is not None else 0} val images, "
         f"{len(r.data.classes)} classes; {c.epochs} epochs x {r.steps_per_epoch} steps, effective batch "
         f"{r.effective_batch} ({c.batch_size} x {info.world_size} device(s) x {c.accum_steps}), lr {r.peak_lr:.3g}, "
         f"device {info.device}, run folder {r.out}")
    if c.lr is None:
        _log(info, f"lr: {c.base_lr:g} x {r.effective_batch}/{c.lr_base_batch} = {r.peak_lr:.3g} (linear scaling rule; "
             "--lr sets it directly)")
    if not fresh:
        return
    configured = warmup_steps_of(c, r.steps_per_epoch)
    if configured > r.total_steps:
        _log(info, f"warning: the warm-up ({configured} steps) is longer than the run ({r.total_steps} steps): the lr "
             f"never reaches {r.peak_lr:.3g}")
    if c.lr is None and not (c.pretrained or c.finetune) and len(r.train_ds) < SMALL_DATA and r.task.finetune_hint:
        _log(info, f"note: from scratch on {len(r.train_ds)} images, a recipe written for a large data set (lr "
             f"{r.peak_lr:.3g}) rarely gets past chance; start from trained weights instead: {r.task.finetune_hint}")


# ---- the loop -------------------------------------------------------------------------------------

def _train_epoch(r: Run, hist: History, pos: Position, epoch: int, interrupts: Interrupts) -> dict:
    """Train one epoch from `pos`; return its record. An interrupt saves the last step boundary."""
    c = r.config
    r.bar.set_description(f"epoch {epoch + 1}/{c.epochs}")
    r.sampler.set_epoch(epoch, pos.batch_in_epoch)
    r.train_ds.set_epoch(epoch)
    r.loader_rng.manual_seed(c.seed * 100_003 + r.info.rank * 1009 + epoch)
    first_batch, first_step = pos.batch_in_epoch, pos.step
    # The last optimizer-step boundary: steps, every RNG state and the model's buffers (BatchNorm
    # statistics) before the next batch is loaded, augmented, mixed and run forward.
    boundary = Position(epoch, first_batch, pos.step, rng_state(), buffers_of(r.model))

    def on_step(s: dict) -> None:
        boundary.step, boundary.rng, boundary.buffers = s["step"], rng_state(), buffers_of(r.model)
        boundary.batch_in_epoch = first_batch + (s["step"] - first_step) * c.accum_steps
        r.bar.update(1)
        r.bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", img_s=f"{s['images_per_sec']:.0f}")
        if r.writer is not None:
            r.writer.add_scalar("train/loss", s["loss"], s["step"])
            r.writer.add_scalar("train/lr", s["lr"], s["step"])

    ctx = StepContext(optimizer=r.optimizer, loss=r.task.loss, lr_at=r.lr_at, device=r.info.device, amp=c.amp,
                      scaler=r.scaler, accum_steps=c.accum_steps, step_on_last_batch=not c.drop_last,
                      clip_grad=c.clip_grad, ema=r.ema, unwrapped=r.model, on_step=on_step,
                      critical=interrupts.deferred)
    try:
        stats = train_one_epoch(r.train_model, r.train_loader, ctx, pos.step)
    except BaseException as e:
        if not interrupts.explains(e):
            raise
        with interrupts.deferred():
            r.train_loader.close()
            if r.info.is_main and not r.fsdp:  # (FSDP would need every rank in a collective here)
                _save(r, _state(r, hist, boundary), improved=None)
        raise KeyboardInterrupt from None
    pos.epoch, pos.batch_in_epoch, pos.step = epoch + 1, 0, stats["step"]
    if stats["skipped_images"]:
        _log(r.info, f"warning: skipped {stats['skipped_images']} unreadable training image(s) in epoch {epoch + 1}")
    return {"epoch": epoch + 1, "step": pos.step, "train_loss": stats["loss"], "lr": r.lr_at(pos.step - 1),
            "train_images_per_sec": stats["images_per_sec"], "epoch_seconds": stats["seconds"]}


def _end_epoch(r: Run, hist: History, pos: Position, record: dict, interrupts: Interrupts) -> None:
    """Evaluate (when due), log, save. An interrupt or a bad file in the evaluation saves the trained
    epoch first, marked for evaluation: the resumed run evaluates it and goes on."""
    c, epoch = r.config, record["epoch"]
    msg = (f"epoch {epoch}/{c.epochs}  train loss {record['train_loss']:.4f}  lr {record['lr']:.2e}  "
           f"{record['train_images_per_sec']:.3g} img/s")
    evaluation = None
    if r.val_loader is not None and (epoch == c.epochs or (c.eval_every > 0 and epoch % c.eval_every == 0)):
        before = dataclasses.replace(pos, rng=rng_state(), pending_record=dict(record))
        try:
            evaluation, line = _evaluate(r, record)
        except BaseException as e:
            if not (interrupts.explains(e) or isinstance(e, UserError)):
                raise
            with interrupts.deferred():
                r.val_loader.close()
                if r.info.is_main or r.fsdp:
                    _save(r, _state(r, hist, before), improved=None)
            if isinstance(e, UserError):
                _log(r.info, f"evaluation failed: saved the trained epoch {epoch} in {r.saved}; fix the data, then "
                     f"--resume auto --output {r.out} evaluates it and goes on")
                raise
            raise KeyboardInterrupt from None
        msg += f"  val {line}"
        if evaluation.get("skipped_images"):
            _log(r.info, f"warning: skipped {evaluation['skipped_images']} unreadable validation image(s)")
    with interrupts.deferred():  # a signal from here on waits for the epoch's files, then stops the run
        improved = hist.add(record, evaluation)
        if r.writer is not None:
            for k, v in record.items():
                if k not in ("epoch", "step") and isinstance(v, (int, float)):
                    r.writer.add_scalar(f"epoch/{k}", v, epoch)
        _log(r.info, msg)
        boundary = dataclasses.replace(pos, rng=None, buffers=None, pending_record=None)
        _save(r, _state(r, hist, boundary) if r.info.is_main or r.fsdp else None, improved)
    barrier()


def _evaluate(r: Run, record: dict) -> tuple[dict, str]:
    """The task's evaluation of the model (and of the EMA); its numbers go into `record`."""
    progress = r.config.progress and r.info.is_main
    res = r.task.evaluate(r.wrapped, r.val_loader, r.info.device, r.config.amp, progress=progress)
    record.update({f"{k}_model": v for k, v in _scalars(res).items()})
    line = ""
    if r.ema is not None:
        res_model = res
        res = r.task.evaluate(r.ema.module, r.val_loader, r.info.device, r.config.amp, progress=progress)
        record.update({f"{k}_ema": v for k, v in _scalars(res).items()})
        line = f"  (model {r.task.summary_line(res_model)})"
    record.update(_scalars(res))
    return res, r.task.summary_line(res) + line


def _state(r: Run, hist: History, pos: Position) -> dict:
    """The checkpoint of `pos` (layout: `checkpoint.training_state`). Under FSDP every rank must call it."""
    if r.fsdp:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = get_model_state_dict(r.wrapped, options=opts)
        optim_sd = get_optimizer_state_dict(r.wrapped, r.optimizer, options=opts)
    else:
        model_sd, optim_sd = unwrap_model(r.model).state_dict(), r.optimizer.state_dict()
    meta = {"reported_weights": r.reported, "model_config": model_config_to_dict(unwrap_model(r.model).config),
            "model_name": r.config.model, "task": r.task.name, "labels": r.data.classes,
            "train_config": config_to_dict(r.config), "requested_config": r.requested}
    return training_state(model_sd, optim_sd, meta=meta, pos=pos, metrics=_metrics(r, hist),
                          ema_sd=r.ema.module.state_dict() if r.ema is not None else None,
                          scaler_sd=r.scaler.state_dict() if r.scaler is not None else None)


def _save(r: Run, state: dict | None, improved: bool | None) -> None:
    """checkpoint-last.pt, then (when `improved`, or none exists yet) checkpoint-best.pt, then metrics.json.

    `improved=None`: an interrupted epoch, only checkpoint-last.pt. Last first: whatever a kill interrupts,
    the resumable state is never behind the best one (a resume rewrites a missing best, `_open_run_folder`).
    """
    if not r.info.is_main or state is None:
        return
    out = r.out
    save_checkpoint(state, out / "checkpoint-last.pt")
    if state["batch_in_epoch"]:
        at = f"epoch {state['epoch'] + 1}, batch {state['batch_in_epoch']}"
    else:
        at = f"epoch {state['epoch']}" + (", before its evaluation" if "pending_record" in state else "")
    r.saved = f"{out / 'checkpoint-last.pt'} ({at})"
    if improved is None:
        return
    if improved or not (out / "checkpoint-best.pt").exists():
        save_checkpoint(best_state(state), out / "checkpoint-best.pt")
    write_atomic(out / "metrics.json", lambda f: f.write(json.dumps(state["metrics"], indent=2).encode()))


def _interrupted(r: Run, hist: History, interrupts: Interrupts) -> None:
    how = "terminated (SIGTERM)" if interrupts.received == "SIGTERM" else "interrupted"
    if r.info.is_main and r.saved:
        _log(r.info, f"\n{how}: saved {r.saved}; continue with --resume auto --output {r.out}")
    if r.info.is_main and hist.records:
        _plot(r, hist)


# ---- the end ------------------------------------------------------------------------------------------

def _metrics(r: Run, hist: History) -> dict:
    """metrics.json: the final evaluation's numbers, the best epoch, how the run ran, and its history."""
    final = hist.last_eval
    speeds = [h["train_images_per_sec"] for h in hist.records if "train_images_per_sec" in h]
    return {
        r.task.primary: None,
        **{k: v for k, v in (final or {}).items() if not isinstance(v, dict)},
        **({"per_class": final["per_class"]} if final and "per_class" in final else {}),
        f"best_{r.task.primary}": hist.best_value,
        "best_epoch": hist.best_epoch,
        "primary_metric": r.task.primary,
        "task": r.task.name,
        "epochs": len({h["epoch"] for h in hist.records}),
        "world_size": r.info.world_size,
        "effective_batch": r.effective_batch,
        "lr": r.peak_lr,
        "train_images_per_sec": sum(speeds) / len(speeds) if speeds else None,
        "evaluated": r.reported,
        "model": r.config.model,
        "params": count_params(r.model),
        "device": str(r.info.device),
        "adapted": r.adapted,
        "threads": torch.get_num_threads(),
        "loader": r.loader_kind,
        "final": final,
        "history": hist.records,
    }


def _finish(r: Run, hist: History, t_start: float, interrupts: Interrupts) -> dict:
    """metrics.json, the curves and the final lines. Training is over: a Ctrl-C or SIGTERM arriving
    now waits for these writes, and the run ends as complete (said in one line)."""
    metrics = _metrics(r, hist)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    if r.info.is_main:
        with interrupts.deferred(raise_pending=False):
            write_atomic(r.out / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2).encode()))
            _plot(r, hist)
        if hist.last_eval is not None:
            _log(r.info, f"final: {r.task.summary_line(hist.last_eval)}  (best {r.task.primary} {hist.best_value:.2f} "
                 f"at epoch {hist.best_epoch}, {r.reported} weights)")
        _log(r.info, f"run folder: {r.out}")
        if interrupts.received:
            _log(r.info, f"{interrupts.received} received after the last epoch: the run finished and its results "
                 "are written")
    # Leave together: no rank tears down its process group while another (rank 0, writing metrics
    # and plots) is still inside the run.
    barrier()
    return metrics


def _plot(r: Run, hist: History) -> None:
    plot_curves(hist.records, r.out / "curves.png", primary=r.task.primary,
                title=f"{r.config.model} on {Path(r.config.data).name} ({r.task.name})")


def _scalars(metrics: dict) -> dict:
    """The per-epoch numbers of an evaluation (not its image counts or per-class tables)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("images", "skipped_images")}


def _append_resume(path: Path, epoch: int, changes: dict) -> None:
    import yaml

    d = yaml.safe_load(path.read_text()) or {}
    d.setdefault("resumed", []).append({"at_epoch": epoch, "changes": changes})
    path.write_text(yaml.safe_dump(d, sort_keys=False))


def plot_curves(history: list[dict], path: Path, title: str = "", primary: str = "top1") -> None:
    """Loss, learning rate and the task's main metric per epoch, one PNG (markers, so 1 epoch shows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o", label="train")
    ev = [h for h in history if "loss_model" in h]
    if ev:
        axes[0].plot([h["epoch"] for h in ev], [h["loss_model"] for h in ev], marker="s", label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [h["lr"] for h in history], marker="o")
    axes[1].set_title("learning rate (end of epoch)")
    for key, label in ((f"{primary}_model", "model"), (f"{primary}_ema", "EMA")):
        pts = [h for h in history if key in h]
        if pts:
            axes[2].plot([h["epoch"] for h in pts], [h[key] for h in pts], marker="o", label=f"{primary} {label}")
    axes[2].set_title(f"validation {primary}")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if len(epochs) <= 20:
            ax.set_xticks(sorted(set(epochs)))
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
