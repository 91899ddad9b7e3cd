"""`run(config)`: one whole training run, the code path of `convnext train`, for every task.

The task (`tasks.py`: classification here, detection/segmentation in `convnext.dense.tasks`)
supplies data, model, loss and evaluation; this module owns everything else: the run folder and
its lock, resume, the optimizer and schedule, AMP, accumulation, DDP/FSDP, EMA, logging and
checkpoints. It leaves config.yaml, metrics.json, checkpoint-last.pt, checkpoint-best.pt,
tensorboard/ and curves.png in the run folder.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..errors import CheckpointError, ConfigError, DataError
from ..models import config_to_dict as model_config_to_dict
from ..models import count_params
from .adapt import adapt_config
from .checkpoint import (
    load_training_checkpoint,
    remove_stale_temporaries,
    rng_state,
    save_checkpoint,
    set_rng_state,
    unwrap_model,
)
from .config import TrainConfig, config_from_dict, config_to_dict, recipe_keys, save_config_yaml
from .distributed import DistInfo, SeededSamples, ShardSampler, TrainSampler, barrier, init_distributed, wrap_model
from .engine import ModelEMA, NonFiniteLossError, StepContext, train_one_epoch
from .rundir import RunLock, check_run_folder, clear_run
from .schedule import make_schedule, scaled_lr, steps_per_epoch
from .tasks import Task, get_task, task_of_model

__all__ = ["run", "default_output", "make_eval_loader", "resolve_resume", "SAFE_TO_CHANGE_ON_RESUME"]

# Options a resumed run may change: they alter how the run executes, not what it computes.
SAFE_TO_CHANGE_ON_RESUME = frozenset({
    "resume", "output", "overwrite", "progress", "num_workers", "threads", "device", "data_dir", "eval_every",
    "strict_images", "compile", "grad_checkpointing", "deterministic", "adapt",
})


def default_output(config: TrainConfig) -> Path:
    data = config.data if config.data in ("digits", "cifar10", "cifar100") else Path(config.data).name
    return Path("runs") / f"{config.recipe or data}-{config.model}"


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


def resolve_resume(config: TrainConfig, saved: dict, explicit: frozenset[str] | None,
                   requested: dict | None = None) -> tuple[TrainConfig, dict]:
    """The config of a resumed run and the safe changes it makes to the saved one.

    Options not given on the command line are taken from the checkpoint (`explicit` names the ones
    that were given; None means all of them, as for `run(config)` from Python). A given option that
    differs from the run's and is not in SAFE_TO_CHANGE_ON_RESUME is refused: resuming with another
    --lr, --epochs or --model would silently train something else.
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
            changes[key] = new[key]  # (resume/output/overwrite name this invocation: not recorded below)
        else:
            unsafe.append(f"--{key.replace('_', '-')} {before.get(key)!r} -> {new[key]!r}")
    if unsafe:
        raise ConfigError(
            f"--resume: this run was started with other settings ({'; '.join(unsafe)}); resume with the run's "
            "settings (omit those flags), or start a new run with another --output"
        )
    return dataclasses.replace(old, **changes), changes


def run(config: TrainConfig, explicit: frozenset[str] | set[str] | None = None) -> dict:
    """Train `config` to the end (or resume it) and return the metrics written to metrics.json.

    The same function serves one CPU process and every rank under torchrun. `explicit` names the
    options the user gave (the CLI passes its flags): only the others may be adapted to the data
    (`adapt.py`) or taken from a resumed checkpoint. Raises the typed errors of `convnext.errors`
    for unusable input and NonFiniteLossError when the loss diverges.
    """
    info = init_distributed(config.device)
    try:
        return _run(config, info, None if explicit is None else frozenset(explicit))
    finally:
        if info.enabled and os.environ.get("CONVNEXT_KEEP_PROCESS_GROUP") is None:
            from .distributed import cleanup_distributed

            cleanup_distributed()


def _run(config: TrainConfig, info: DistInfo, explicit: frozenset[str] | None) -> dict:
    out = Path(config.output) if config.output else default_output(config)
    if config.finetune is not None and not Path(config.finetune).exists():
        raise ConfigError(f"--finetune {config.finetune}: no such file or folder")
    resume_path = out / "checkpoint-last.pt" if config.resume == "auto" else config.resume
    # An explicit --resume FILE that is missing fails when it is read; `auto` without a checkpoint starts afresh.
    resuming = config.resume not in (None, "auto") or (resume_path is not None and Path(resume_path).is_file())
    if info.is_main:
        check_run_folder(out, resuming=resuming or config.resume == "auto", overwrite=config.overwrite)
    # Rank 0 holds the folder's lock for the whole run; other ranks never write into it.
    with RunLock(out) if info.is_main else contextlib.nullcontext():
        if info.is_main:
            if config.overwrite and not resuming:
                removed = clear_run(out)
                if removed:
                    _log(info, f"--overwrite: removed the previous run's {', '.join(removed)} from {out}")
            for tmp in remove_stale_temporaries(out):
                _log(info, f"removed {tmp.name}, left by a save that was killed")
        return _train(config, info, explicit, out, resume_path if resuming else None)


def _train(config: TrainConfig, info: DistInfo, explicit, out: Path, resume_path) -> dict:
    t_start = time.perf_counter()
    device = info.device

    # ---- resume: the checkpoint's config, with only safe changes --------------------------------
    ckpt, resume_changes = None, {}
    if resume_path is not None:
        ckpt = load_training_checkpoint(resume_path)
        requested = ckpt.get("requested_config", ckpt["train_config"])
        config, resume_changes = resolve_resume(config, ckpt["train_config"], explicit, requested)
        if ckpt["model_name"] != config.model:
            raise CheckpointError(f"--resume: checkpoint is a {ckpt['model_name']} run, but --model is {config.model}")
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)

    # ---- data --------------------------------------------------------------------------------
    task: Task = get_task(config.task or task_of_model(config.model))
    data = task.build_data(config)
    for note in data.notes:
        _log(info, note)

    # ---- adapt defaults that cannot make sense for this run (never on resume: already adapted) ----
    adapted: list[str] = []
    requested_config = config_to_dict(config)
    if ckpt is None:
        # What the user gave and what a named recipe sets stay as written; only defaults are adapted.
        fixed = set(explicit or ()) | recipe_keys(config.recipe)
        config, adapted = adapt_config(config, num_train=len(data.train), world_size=info.world_size,
                                       local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
                                       explicit=fixed)
        for note in adapted:
            _log(info, f"adapted: {note}")

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

    # ---- model, EMA, optimizer ---------------------------------------------------------------
    _seed_everything(config.seed)  # identical initial weights on every rank (and for the EMA copy)
    model = task.build_model(config, data)
    if ckpt is None and (config.pretrained or config.finetune):
        _log(info, task.load_initial_weights(model, config))
    _seed_everything(config.seed + info.rank)  # then per-rank streams for augmentation and drop path
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if ckpt is not None:  # weights go in before DDP/FSDP wrapping (FSDP then shards them)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise CheckpointError(f"--resume {resume_path}: weights do not fit {config.model} "
                                  f"({str(e).splitlines()[0]})") from None
    ema = ModelEMA(model, config.ema_decay) if config.ema else None
    if ema is not None and ckpt is not None and "model_ema" in ckpt:
        ema.module.load_state_dict(ckpt["model_ema"])
    fsdp = config.fsdp and info.enabled
    if ema is not None and fsdp:
        raise ConfigError("--ema with --fsdp is not supported: the EMA would need the full weights on every rank")
    if info.enabled and device.type == "cuda" and task.name != "classification":
        # The dense heads' BatchNorm is SyncBN in the official configs (statistics over all GPUs'
        # 2 images each); torch's SyncBatchNorm runs on CUDA only, so gloo/CPU runs keep plain BN.
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    groups = task.param_groups(model, config)
    wrapped = wrap_model(model, info, fsdp=config.fsdp)
    if fsdp:  # FSDP re-creates parameters: regroup them by name
        by_name = dict(wrapped.named_parameters())
        for g in groups:
            g["params"] = [by_name[n] for n in g["names"]]

    # Compiled training steps; checkpoints and evaluation keep using the uncompiled module (same parameters).
    # dynamic=False: a new input shape (a short last batch) recompiles a static graph rather than
    # switching to symbolic shapes, which inductor does not always handle in these kernels.
    train_model = torch.compile(wrapped, dynamic=False) if config.compile else wrapped

    effective_batch = config.batch_size * info.world_size * config.accum_steps
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.base_lr, effective_batch, config.lr_base_batch)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=config.betas, eps=config.eps)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None

    spe = steps_per_epoch(sampler.batches_per_epoch, config.accum_steps, config.drop_last)
    total_steps = config.epochs * spe
    lr_at, warmup_steps = make_schedule(config, peak_lr=peak_lr, steps_per_epoch=spe)

    # The loader draws its worker base seed from this generator, not from the global RNG, and it is
    # re-seeded from (seed, rank, epoch) every epoch: resuming never shifts the global random stream.
    # Inside workers, `SeededSamples` then reseeds per image, so batches may change workers on resume.
    loader_rng = torch.Generator()
    train_loader, loader_kind = _train_loader(config, task, data, train_ds, sampler, device, loader_rng)
    val_loader = (make_eval_loader(data.val, data.eval_batch_size or config.batch_size, config.num_workers, info,
                                   data.collate_eval) if data.val is not None else None)

    # ---- state restored from a checkpoint ----------------------------------------------------
    start_epoch, start_batch, step = 0, 0, 0
    history: list[dict] = []
    best = {"value": None, "epoch": None}
    last_eval: dict | None = None
    if ckpt is not None:
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(wrapped, optimizer, ckpt["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, start_batch, step = ckpt["epoch"], ckpt.get("batch_in_epoch", 0), ckpt["step"]
        saved = ckpt["metrics"]
        history = list(saved.get("history", []))
        best = {"value": saved.get(f"best_{task.primary}"), "epoch": saved.get("best_epoch")}
        last_eval = saved.get("final")  # resuming a finished run reports its final evaluation
        if last_eval is None and saved.get("top1") is not None:  # checkpoints written before "final" existed
            last_eval = {"top1": saved["top1"], "top5": saved.get("top5")}
        if info.rank == 0:
            set_rng_state(ckpt["rng"])
        else:
            _seed_everything(config.seed + info.rank + 1000 * start_epoch)
        _log(info, f"resumed from epoch {start_epoch}" + (f", batch {start_batch}" if start_batch else "")
             + f" (optimizer step {step})"
             + "".join(f"; --{k.replace('_', '-')} now {v!r}" for k, v in resume_changes.items()
                       if k not in ("resume", "output", "overwrite")))

    # ---- run folder --------------------------------------------------------------------------
    writer = None
    resolved = {"output": str(out), "world_size": info.world_size, "effective_batch": effective_batch,
                "lr": peak_lr, "warmup_steps": warmup_steps, "total_steps": total_steps,
                "num_classes": len(data.classes), "task": task.name, "adapted": adapted}
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is None or not (out / "config.yaml").exists():
            save_config_yaml(config, out / "config.yaml", extra=resolved)
        elif recorded := {k: v for k, v in resume_changes.items() if k not in ("resume", "output", "overwrite")}:
            _append_resume(out / "config.yaml", start_epoch, recorded)  # the first config is never lost
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    n_params = count_params(model)
    reported = "ema" if ema is not None else "model"
    _log(info, f"{config.model} ({n_params / 1e6:.2f} M params, {task.name}) on {config.data}: {len(train_ds)} train"
         f" / {len(data.val) if data.val is not None else 0} val images, {len(data.classes)} classes; "
         f"{config.epochs} epochs x {spe} steps, effective batch {effective_batch} "
         f"({config.batch_size} x {info.world_size} device(s) x {config.accum_steps}), lr {peak_lr:.3g}, "
         f"device {device}, run folder {out}")

    def state_dict(epoch: int, batch_in_epoch: int, metrics: dict, rng: dict) -> dict:
        """The checkpoint content. Under FSDP every rank must call it (the full state is gathered)."""
        if fsdp:
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            model_sd, optim_sd = get_model_state_dict(wrapped, options=opts), get_optimizer_state_dict(
                wrapped, optimizer, options=opts)
        else:
            model_sd, optim_sd = unwrap_model(model).state_dict(), optimizer.state_dict()
        return {
            "model": model_sd,
            **({"model_ema": ema.module.state_dict()} if ema is not None else {}),
            "reported_weights": reported,  # the weights every reported accuracy belongs to
            "model_config": model_config_to_dict(unwrap_model(model).config),
            "model_name": config.model,
            "task": task.name,
            "labels": data.classes,
            "train_config": config_to_dict(config),
            "requested_config": requested_config if ckpt is None else ckpt.get("requested_config", requested_config),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "optimizer": optim_sd,
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng,
            "metrics": metrics,
        }

    def summary(final: dict | None) -> dict:
        speeds = [h["train_images_per_sec"] for h in history if "train_images_per_sec" in h]
        return {
            task.primary: None,
            **{k: v for k, v in (final or {}).items() if not isinstance(v, dict)},
            **({"per_class": final["per_class"]} if final and "per_class" in final else {}),
            f"best_{task.primary}": best["value"],
            "best_epoch": best["epoch"],
            "primary_metric": task.primary,
            "task": task.name,
            "epochs": len({h["epoch"] for h in history}),
            "world_size": info.world_size,
            "effective_batch": effective_batch,
            "lr": peak_lr,
            "train_images_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "evaluated": reported,
            "model": config.model,
            "params": n_params,
            "device": str(device),
            "adapted": adapted,
            "loader": loader_kind,
            "final": final,
            "history": history,
        }

    def save(state: dict, improved: bool) -> None:
        # Best first, then last: whatever a kill interrupts, checkpoint-best.pt is never older than
        # the best epoch that checkpoint-last.pt (and metrics.json) name.
        if improved or not (out / "checkpoint-best.pt").exists():
            save_checkpoint(state, out / "checkpoint-best.pt")
        save_checkpoint(state, out / "checkpoint-last.pt")
        (out / "metrics.json").write_text(json.dumps(state["metrics"], indent=2))

    # ---- training ------------------------------------------------------------------------------
    from tqdm import tqdm

    # The bar goes to stderr, the epoch lines and the final result to stdout, so `> log` keeps a clean
    # record; redirected to a file, the bar refreshes every 30 s instead of flooding it.
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0, disable=not (config.progress and info.is_main))
    # Optimizer steps taken so far and the RNG state at that boundary (before the next batch is
    # loaded, augmented or mixed): an interrupt anywhere inside a batch saves this, so the resumed
    # run replays that batch with exactly the random numbers it would have drawn.
    progress = {"step": step, "rng": None}

    def on_step(s: dict) -> None:
        progress["step"], progress["rng"] = s["step"], rng_state()
        bar.update(1)
        bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", img_s=f"{s['images_per_sec']:.0f}")
        if writer is not None:
            writer.add_scalar("train/loss", s["loss"], s["step"])
            writer.add_scalar("train/lr", s["lr"], s["step"])

    ctx = StepContext(optimizer=optimizer, loss=task.loss, lr_at=lr_at, device=device, amp=config.amp,
                      scaler=scaler, accum_steps=config.accum_steps, step_on_last_batch=not config.drop_last,
                      clip_grad=config.clip_grad, ema=ema, unwrapped=model, on_step=on_step)
    try:
        for epoch in range(start_epoch, config.epochs):
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            sampler.set_epoch(epoch, start_batch)
            train_ds.set_epoch(epoch)
            loader_rng.manual_seed(config.seed * 100_003 + info.rank * 1009 + epoch)
            epoch_start_step = step
            progress["rng"] = rng_state()
            try:
                stats = train_one_epoch(train_model, train_loader, ctx, step)
            except KeyboardInterrupt:
                # Save where we are: a mid-epoch checkpoint resumes at the next unfinished batch.
                done = start_batch + (progress["step"] - epoch_start_step) * config.accum_steps
                step = progress["step"]
                if info.is_main and not fsdp:  # (FSDP would need every rank in a collective here)
                    save_checkpoint(state_dict(epoch, done, summary(last_eval), progress["rng"]),
                                    out / "checkpoint-last.pt")
                    _log(info, f"\ninterrupted: saved {out / 'checkpoint-last.pt'} (epoch {epoch + 1}, batch {done}); "
                         f"continue with --resume auto --output {out}")
                raise
            step, start_batch = stats["step"], 0
            record = {"epoch": epoch + 1, "step": step, "train_loss": stats["loss"], "lr": lr_at(step - 1),
                      "train_images_per_sec": stats["images_per_sec"], "epoch_seconds": stats["seconds"]}
            if stats["skipped_images"]:
                _log(info, f"warning: skipped {stats['skipped_images']} unreadable training image(s) "
                     f"in epoch {epoch + 1}")
            is_last = epoch + 1 == config.epochs
            msg = (f"epoch {epoch + 1}/{config.epochs}  train loss {stats['loss']:.4f}  lr {record['lr']:.2e}  "
                   f"{stats['images_per_sec']:.3g} img/s")
            if val_loader is not None and (is_last or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0)):
                res = task.evaluate(wrapped, val_loader, device, config.amp)
                record.update({f"{k}_model": v for k, v in _scalars(res).items()})
                if ema is not None:
                    res_model = res
                    res = task.evaluate(ema.module, val_loader, device, config.amp)
                    record.update({f"{k}_ema": v for k, v in _scalars(res).items()})
                record.update(_scalars(res))
                last_eval = res
                msg += f"  val {task.summary_line(res)}"
                if ema is not None:
                    msg += f"  (model {task.summary_line(res_model)})"
                if res.get("skipped_images"):
                    _log(info, f"warning: skipped {res['skipped_images']} unreadable validation image(s)")
            history.append(record)
            primary = record.get(task.primary)
            improved = primary is not None and (best["value"] is None or primary > best["value"])
            if improved:
                best = {"value": primary, "epoch": epoch + 1}
            if writer is not None:
                for k, v in record.items():
                    if k not in ("epoch", "step") and isinstance(v, (int, float)):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            _log(info, msg)
            state = state_dict(epoch + 1, 0, summary(last_eval), rng_state()) if info.is_main or fsdp else None
            if info.is_main:
                save(state, improved)
            barrier()
    except NonFiniteLossError as e:
        last = out / "checkpoint-last.pt"
        kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"{e}; stopping, {kept} (try a lower --lr, --clip-grad 1.0, or --amp bf16 instead of fp16)"
        ) from None
    finally:
        bar.close()
        if writer is not None:
            writer.close()

    metrics = summary(last_eval)
    metrics["wall_seconds"] = time.perf_counter() - t_start
    if info.is_main:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        plot_curves(history, out / "curves.png", title=f"{config.model} on {Path(config.data).name} ({task.name})",
                    primary=task.primary)
        if last_eval is not None:
            _log(info, f"final: {task.summary_line(last_eval)}  (best {task.primary} {best['value']:.2f} at epoch "
                 f"{best['epoch']}, {reported} weights)")
        _log(info, f"run folder: {out}")
    # Leave together: no rank tears down its process group while another (rank 0, writing metrics
    # and plots) is still inside the run.
    barrier()
    return metrics


def _train_loader(config: TrainConfig, task: Task, data, train_ds, sampler, device: torch.device,
                  generator: torch.Generator):
    """(training loader, which kind ran): `--loader` for classification, the task's DataLoader otherwise."""
    kind = config.loader
    if kind == "auto" and (device.type != "cuda" or task.name != "classification"):
        kind = "workers"  # on CPU the DataLoader keeps the exact PIL pipeline of the recipe
    if kind != "workers":
        if task.name != "classification":
            raise ConfigError(f"--loader {kind}: only classification has a device-side pipeline; use --loader workers")
        from ..data.device_loader import DeviceAugment, build_loader

        augment = DeviceAugment(config.img_size, scale=config.scale, hflip=config.hflip, randaug=config.randaug,
                                reprob=config.reprob)
        return build_loader(kind, train_ds, batch_size=config.batch_size, sampler=sampler, device=device,
                            augment=augment, seed=config.seed, num_workers=config.num_workers, generator=generator,
                            even=data.pair_multiple == 2)
    return DataLoader(train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                      generator=generator, collate_fn=data.collate_train, pin_memory=device.type == "cuda"), "workers"


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
