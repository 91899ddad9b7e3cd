"""`run(config)`: one whole training run, the code path of `convnext train`.

Builds data, model, optimizer and schedule from a resolved `TrainConfig`, trains with
`engine.train_one_epoch`, evaluates, and leaves the run folder:
config.yaml, metrics.json, checkpoint-last.pt, checkpoint-best.pt, tensorboard/ and curves.png.
"""
from __future__ import annotations

import functools
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import build_dataset, collate_skip_bad, eval_transform, mixup_and_criterion, subset, train_transform
from ..data.datasets import DataError
from ..models import config_to_dict as model_config_to_dict
from ..models import count_params, create_model, get_spec
from .checkpoint import load_training_checkpoint, rng_state, save_checkpoint, set_rng_state, unwrap_model
from .config import TrainConfig, config_to_dict, save_config_yaml
from .distributed import DistInfo, SeededSamples, ShardSampler, TrainSampler, barrier, init_distributed, wrap_model
from .engine import ModelEMA, NonFiniteLossError, StepContext, evaluate, train_one_epoch
from .param_groups import param_groups
from .schedule import lr_at_step, scaled_lr, steps_per_epoch

__all__ = ["run", "default_output", "build_model_for", "make_eval_loader"]


def default_output(config: TrainConfig) -> Path:
    data = config.data if config.data in ("digits", "cifar10", "cifar100") else Path(config.data).name
    return Path("runs") / f"{config.recipe or data}-{config.model}"


def _log(info: DistInfo, msg: str) -> None:
    if info.is_main:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stdout)
        sys.stdout.flush()  # visible at once in log files (SLURM, nohup), not at exit


def build_model_for(config: TrainConfig, num_classes: int) -> torch.nn.Module:
    """The model of `config`: registry entry + overrides + paper drop path (+ fine-tuning weights)."""
    try:
        spec = get_spec(config.model)
    except KeyError as e:
        raise ValueError(f"--model: {e.args[0]}") from None
    overrides = dict(config.model_overrides)
    if config.layer_scale is not None:
        overrides["layer_scale_init_value"] = config.layer_scale
    if config.head_init_scale is not None:
        overrides["head_init_scale"] = config.head_init_scale
    drop_path = config.drop_path if config.drop_path is not None else spec.train_drop_path
    try:
        return create_model(
            config.model, num_classes=num_classes, drop_path_rate=drop_path,
            checkpoint=config.finetune, reinit_head=config.finetune is not None, **overrides,
        )
    except TypeError as e:  # unknown config override
        raise ValueError(f"--model-overrides: {e}") from None


def make_eval_loader(dataset, batch_size: int, num_workers: int, info: DistInfo) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch_size, sampler=ShardSampler(dataset, info.rank, info.world_size),
        num_workers=num_workers, collate_fn=collate_skip_bad, pin_memory=info.device.type == "cuda",
    )


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def run(config: TrainConfig) -> dict:
    """Train `config` to the end (or resume it) and return the metrics written to metrics.json.

    The same function serves one CPU process and every rank under torchrun. Raises ValueError
    (DataError) for unusable input and NonFiniteLossError when the loss diverges.
    """
    info = init_distributed(config.device)
    try:
        return _run(config, info)
    finally:
        if info.enabled and os.environ.get("CONVNEXT_KEEP_PROCESS_GROUP") is None:
            from .distributed import cleanup_distributed

            cleanup_distributed()


def _run(config: TrainConfig, info: DistInfo) -> dict:
    t_start = time.perf_counter()
    device = info.device
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    out = Path(config.output) if config.output else default_output(config)

    # ---- resume ------------------------------------------------------------------------------
    ckpt = None
    if config.resume == "auto":
        if (out / "checkpoint-last.pt").is_file():
            ckpt = load_training_checkpoint(out / "checkpoint-last.pt")
    elif config.resume:
        ckpt = load_training_checkpoint(config.resume)
    if ckpt is not None and ckpt["model_name"] != config.model:
        raise ValueError(f"--resume: checkpoint is a {ckpt['model_name']} run, but --model is {config.model}")

    # ---- data --------------------------------------------------------------------------------
    tf_train = train_transform(config.img_size, scale=config.scale, hflip=config.hflip, randaug=config.randaug,
                               reprob=config.reprob)
    tf_eval = eval_transform(config.img_size, crop_pct=config.crop_pct)
    train_ds = build_dataset(config.data, "train", tf_train, strict=config.strict_images, data_dir=config.data_dir)
    classes = list(train_ds.classes)
    try:
        val_ds = build_dataset(config.data, "val", tf_eval, classes=classes, strict=config.strict_images,
                               data_dir=config.data_dir)
    except DataError:
        if config.eval_every != 0:
            raise
        val_ds = None  # e.g. ImageNet-22K pre-training: no evaluation during training (PAPER.md §3.3)
    for name, ds in (("train", train_ds), ("val", val_ds)):
        empty = getattr(ds, "empty_classes", [])
        if empty:
            _log(info, f"warning: {len(empty)} class folder(s) of the {name} split hold no images: "
                 f"{', '.join(empty[:10])}")
    # Augmentation in workers seeded per (seed, epoch, image): exact mid-epoch resume with workers too.
    train_ds = SeededSamples(subset(train_ds, config.train_subset, seed=config.seed), config.seed)

    sampler = TrainSampler(train_ds, config.batch_size, info.rank, info.world_size, seed=config.seed)
    if sampler.batches_per_epoch < config.accum_steps:
        raise DataError(
            f"{len(train_ds)} training images do not fill one optimizer step of "
            f"{config.batch_size} x {info.world_size} device(s) x {config.accum_steps} accumulation steps; "
            f"lower --batch-size or --accum-steps"
        )

    # ---- model, EMA, optimizer ---------------------------------------------------------------
    _seed_everything(config.seed)  # identical initial weights on every rank (and for the EMA copy)
    model = build_model_for(config, len(classes))
    _seed_everything(config.seed + info.rank)  # then per-rank streams for augmentation and drop path
    if config.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device)
    if ckpt is not None:  # weights go in before DDP/FSDP wrapping (FSDP then shards them)
        model.load_state_dict(ckpt["model"])
    ema = ModelEMA(model, config.ema_decay) if config.ema else None
    if ema is not None and ckpt is not None and "model_ema" in ckpt:
        ema.module.load_state_dict(ckpt["model_ema"])
    fsdp = config.fsdp and info.enabled
    if ema is not None and fsdp:
        raise ValueError("--ema with --fsdp is not supported: the EMA would need the full weights on every rank")
    groups = param_groups(model, config.weight_decay, config.layer_decay)
    wrapped = wrap_model(model, info, fsdp=config.fsdp)
    if fsdp:  # FSDP re-creates parameters: regroup them by name
        by_name = dict(wrapped.named_parameters())
        for g in groups:
            g["params"] = [by_name[n] for n in g["names"]]

    # Compiled training steps; checkpoints and evaluation keep using the uncompiled module (same parameters).
    train_model = torch.compile(wrapped) if config.compile else wrapped

    effective_batch = config.batch_size * info.world_size * config.accum_steps
    peak_lr = config.lr if config.lr is not None else scaled_lr(config.base_lr, effective_batch, config.lr_base_batch)
    optimizer = torch.optim.AdamW(groups, lr=peak_lr, betas=config.betas, eps=config.eps)
    scaler = torch.amp.GradScaler(device.type) if config.amp == "fp16" else None
    mixup, criterion = mixup_and_criterion(len(classes), mixup=config.mixup, cutmix=config.cutmix,
                                           switch_prob=config.mixup_switch_prob, smoothing=config.smoothing)

    spe = steps_per_epoch(sampler.batches_per_epoch, config.accum_steps)
    total_steps = config.epochs * spe
    warmup_steps = round(config.warmup_epochs * spe)
    lr_at = functools.partial(lr_at_step, peak_lr=peak_lr, min_lr=config.min_lr, warmup_steps=warmup_steps,
                              total_steps=total_steps)

    # The loader draws its worker base seed from this generator, not from the global RNG, and it is
    # re-seeded from (seed, rank, epoch) every epoch: resuming never shifts the global random stream.
    # Inside workers, `SeededSamples` then reseeds per image, so batches may change workers on resume.
    loader_rng = torch.Generator()
    train_loader = DataLoader(
        train_ds, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers, generator=loader_rng,
        collate_fn=functools.partial(collate_skip_bad, even=mixup is not None),
        pin_memory=device.type == "cuda", drop_last=True,
    )
    val_loader = make_eval_loader(val_ds, config.batch_size, config.num_workers, info) if val_ds is not None else None

    # ---- state restored from a checkpoint ----------------------------------------------------
    start_epoch, start_batch, step = 0, 0, 0
    history: list[dict] = []
    best = {"top1": None, "epoch": None}
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
        history = list(ckpt["metrics"].get("history", []))
        best = {"top1": ckpt["metrics"].get("best_top1"), "epoch": ckpt["metrics"].get("best_epoch")}
        if ckpt["metrics"].get("top1") is not None:  # resuming a finished run reports its final evaluation
            last_eval = {"top1": ckpt["metrics"]["top1"], "top5": ckpt["metrics"]["top5"]}
        if info.rank == 0:
            set_rng_state(ckpt["rng"])
        else:
            _seed_everything(config.seed + info.rank + 1000 * start_epoch)
        _log(info, f"resumed from epoch {start_epoch}" + (f", batch {start_batch}" if start_batch else "")
             + f" (optimizer step {step})")

    # ---- run folder --------------------------------------------------------------------------
    writer = None
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config_yaml(config, out / "config.yaml", extra={
            "output": str(out), "world_size": info.world_size, "effective_batch": effective_batch, "lr": peak_lr,
            "warmup_steps": warmup_steps, "total_steps": total_steps, "num_classes": len(classes),
        })
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"))
    n_params = count_params(model)
    _log(info, f"{config.model} ({n_params / 1e6:.2f} M params) on {config.data}: {len(train_ds)} train / "
         f"{len(val_ds) if val_ds is not None else 0} val images, {len(classes)} classes; "
         f"{config.epochs} epochs x {spe} steps, effective batch {effective_batch} "
         f"({config.batch_size} x {info.world_size} device(s) x {config.accum_steps}), lr {peak_lr:.3g}, "
         f"device {device}, run folder {out}")

    def state_dict(epoch: int, batch_in_epoch: int, metrics: dict) -> dict:
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
            "model_config": model_config_to_dict(unwrap_model(model).config),
            "model_name": config.model,
            "labels": classes,
            "train_config": config_to_dict(config),
            "epoch": epoch,
            "batch_in_epoch": batch_in_epoch,
            "step": step,
            "optimizer": optim_sd,
            "scaler": scaler.state_dict() if scaler is not None else {},
            "rng": rng_state(),
            "metrics": metrics,
        }

    def summary(final: dict | None) -> dict:
        speeds = [h["train_images_per_sec"] for h in history if "train_images_per_sec" in h]
        return {
            "top1": final["top1"] if final else None,
            "top5": final["top5"] if final else None,
            "best_top1": best["top1"],
            "best_epoch": best["epoch"],
            "epochs": len({h["epoch"] for h in history}),
            "world_size": info.world_size,
            "effective_batch": effective_batch,
            "lr": peak_lr,
            "train_images_per_sec": sum(speeds) / len(speeds) if speeds else None,
            "evaluated": "ema" if ema is not None else "model",
            "model": config.model,
            "params": n_params,
            "device": str(device),
            "history": history,
        }

    # ---- training ------------------------------------------------------------------------------
    from tqdm import tqdm

    # The bar goes to stderr, the epoch lines and the final result to stdout, so `> log` keeps a clean
    # record; redirected to a file, the bar refreshes every 30 s instead of flooding it.
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stderr,
               mininterval=0.1 if sys.stderr.isatty() else 30.0, disable=not (config.progress and info.is_main))
    progress = {"step": step}  # optimizer steps taken so far, also when interrupted mid-epoch

    def on_step(s: dict) -> None:
        progress["step"] = s["step"]
        bar.update(1)
        bar.set_postfix(loss=f"{s['loss']:.3f}", lr=f"{s['lr']:.2e}", img_s=f"{s['images_per_sec']:.0f}")
        if writer is not None:
            writer.add_scalar("train/loss", s["loss"], s["step"])
            writer.add_scalar("train/lr", s["lr"], s["step"])

    ctx = StepContext(optimizer=optimizer, criterion=criterion, lr_at=lr_at, device=device, amp=config.amp,
                      scaler=scaler, accum_steps=config.accum_steps, clip_grad=config.clip_grad, mixup=mixup,
                      ema=ema, unwrapped=model, on_step=on_step)
    try:
        for epoch in range(start_epoch, config.epochs):
            bar.set_description(f"epoch {epoch + 1}/{config.epochs}")
            sampler.set_epoch(epoch, start_batch)
            train_ds.set_epoch(epoch)
            loader_rng.manual_seed(config.seed * 100_003 + info.rank * 1009 + epoch)
            epoch_start_step = step
            try:
                stats = train_one_epoch(train_model, train_loader, ctx, step)
            except KeyboardInterrupt:
                # Save where we are: a mid-epoch checkpoint resumes at the next unfinished batch.
                done = start_batch + (progress["step"] - epoch_start_step) * config.accum_steps
                step = progress["step"]
                if info.is_main and not fsdp:  # (FSDP would need every rank in a collective here)
                    save_checkpoint(state_dict(epoch, done, summary(last_eval)), out / "checkpoint-last.pt")
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
            if val_loader is not None and (is_last or (config.eval_every > 0 and (epoch + 1) % config.eval_every == 0)):
                res = evaluate(wrapped, val_loader, device, config.amp)
                record.update(top1_model=res["top1"], top5_model=res["top5"], val_loss=res["loss"])
                if ema is not None:
                    res = evaluate(ema.module, val_loader, device, config.amp)
                    record.update(top1_ema=res["top1"], top5_ema=res["top5"])
                record.update(top1=res["top1"], top5=res["top5"])
                last_eval = res
                if res["skipped_images"]:
                    _log(info, f"warning: skipped {res['skipped_images']} unreadable validation image(s)")
            history.append(record)
            improved = "top1" in record and (best["top1"] is None or record["top1"] > best["top1"])
            if improved:
                best = {"top1": record["top1"], "epoch": epoch + 1}
            if writer is not None:
                for k, v in record.items():
                    if k not in ("epoch", "step"):
                        writer.add_scalar(f"epoch/{k}", v, epoch + 1)
            msg = (f"epoch {epoch + 1}/{config.epochs}  train loss {stats['loss']:.4f}  lr {record['lr']:.2e}  "
                   f"{stats['images_per_sec']:.0f} img/s")
            if "top1" in record:
                msg += f"  val top-1 {record['top1']:.2f}%  top-5 {record['top5']:.2f}%"
                if ema is not None:
                    msg += f"  (model {record['top1_model']:.2f}%)"
            _log(info, msg)
            state = state_dict(epoch + 1, 0, summary(last_eval)) if info.is_main or fsdp else None
            if info.is_main:
                save_checkpoint(state, out / "checkpoint-last.pt")
                if improved or not (out / "checkpoint-best.pt").exists():
                    save_checkpoint(state, out / "checkpoint-best.pt")
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
        _plot_curves(history, out / "curves.png")
        if last_eval is not None:
            _log(info, f"final: top-1 {metrics['top1']:.2f}%  top-5 {metrics['top5']:.2f}%  "
                 f"(best {metrics['best_top1']:.2f}% at epoch {metrics['best_epoch']}, {metrics['evaluated']} weights)")
        _log(info, f"run folder: {out}")
    # Leave together: no rank tears down its process group while another (rank 0, writing metrics
    # and plots) is still inside the run.
    barrier()
    return metrics


def _plot_curves(history: list[dict], path: Path) -> None:
    """Loss, learning rate and accuracy per epoch, one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], label="train")
    ev = [h for h in history if "val_loss" in h]
    axes[0].plot([h["epoch"] for h in ev], [h["val_loss"] for h in ev], label="val")
    axes[0].set_title("loss")
    axes[1].plot(epochs, [h["lr"] for h in history])
    axes[1].set_title("learning rate (end of epoch)")
    for key, label in (("top1_model", "model"), ("top1_ema", "EMA")):
        pts = [h for h in history if key in h]
        if pts:
            axes[2].plot([h["epoch"] for h in pts], [h[key] for h in pts], label=f"top-1 {label}")
    axes[2].set_title("val accuracy (%)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
