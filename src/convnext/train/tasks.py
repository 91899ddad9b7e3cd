"""What a task plugs into the one training loop (STYLE.md: "one loop, tasks plug in").

The loop (`trainer.run`, `engine.train_one_epoch`) owns resume, AMP, accumulation, distributed,
EMA, logging and checkpoints. A task says how to build the data and the model, how to compute
the loss of one batch, how to evaluate, and which metric picks the best checkpoint:

    task = get_task(config)                   # from --task, or implied by the model name
    data = task.build_data(config)            # TaskData: datasets, classes, collate functions
    model = task.build_model(config, data)
    loss = task.loss(model, inputs, targets, device)      # one micro-batch, under autocast
    loader, kind = task.train_loader(config, data, dataset, sampler, device, generator)
    metrics = engine.evaluate(model, loader, device, amp, task.evaluator(data.val))  # the one eval loop

Tasks register by name (`register_task`, as torchvision's `register_model`): classification here;
detection and segmentation register themselves when their module (in the dense package, above this
one) is imported by the top layer. This package never imports the dense one.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import ConfigError

__all__ = ["TaskData", "Task", "ClassificationTask", "get_task", "register_task", "TASKS", "task_of_model"]


@dataclass
class TaskData:
    train: Dataset | None  # None only from build_data(train=False)
    val: Dataset | None
    classes: list[str]
    collate_train: Callable
    collate_eval: Callable
    notes: list[str] = field(default_factory=list)  # warnings to print once (empty class folders...)
    pair_multiple: int = 1  # the training batch must be a multiple of this (2 under Mixup/CutMix)
    eval_batch_size: int | None = None  # None = the training batch size


class Task:
    """Base class: the hooks the loop calls. Subclasses fill in every method."""

    name = "task"
    primary = "loss"  # metric that picks checkpoint-best.pt (higher is better)
    # Convert BatchNorm to SyncBatchNorm under multi-GPU DDP (the dense heads' BN is SyncBN in the
    # official configs; torch's SyncBatchNorm runs on CUDA only, so gloo/CPU runs keep plain BN).
    sync_batchnorm = False
    finetune_hint: str | None = None  # what to try instead of training from scratch on a small data set

    def build_data(self, config, train: bool = True) -> TaskData:
        """The datasets of `config.data`; `train=False` (evaluation only) may leave `TaskData.train` None."""
        raise NotImplementedError

    def build_model(self, config, data: TaskData) -> nn.Module:
        raise NotImplementedError

    def create_model(self, config, num_classes: int, *, spec_drop_path: bool = False) -> nn.Module:
        """The registered `config.model` with the config's overrides (layer scale, head init, drop path),
        refusing a model of another task; one ConfigError naming the flag for every bad value.

        `spec_drop_path`: without --drop-path use the paper's training value of the registry entry
        (classification) instead of the one built into the model's config (dense models).
        """
        from ..models import create_model, get_spec

        try:
            spec = get_spec(config.model)
        except KeyError as e:
            raise ConfigError(f"--model: {e.args[0]}") from None
        if spec.task != self.name:
            raise ConfigError(f"--model {config.model} is a {spec.task} model, but --task is {self.name} "
                              f"(see `convnext models --task {self.name}`)")
        kw = dict(config.model_overrides)
        if config.layer_scale is not None:
            kw["layer_scale_init_value"] = config.layer_scale
        if config.head_init_scale is not None:
            kw["head_init_scale"] = config.head_init_scale
        if config.drop_path is not None or spec_drop_path:
            kw["drop_path_rate"] = config.drop_path if config.drop_path is not None else spec.train_drop_path
        try:
            return create_model(config.model, num_classes=num_classes, **kw)
        except (TypeError, ValueError) as e:  # unknown override, or a config the model refuses
            raise ConfigError(f"--model-overrides: {e}") from None

    def param_groups(self, model: nn.Module, config) -> list[dict]:
        from .param_groups import param_groups

        return param_groups(model, config.weight_decay, config.layer_decay)

    def load_initial_weights(self, model: nn.Module, config) -> str:
        """--pretrained / --finetune: load starting weights into a fresh model; return what was done."""
        from ..weights import load_checkpoint, load_pretrained

        if config.pretrained:
            return f"--pretrained: {load_pretrained(model, config.model, reinit_head=True)}"
        return f"--finetune: {load_checkpoint(model, config.finetune, reinit_head=True)}"

    def loss(self, model: nn.Module, inputs: Any, targets: Any, device: torch.device) -> torch.Tensor:
        raise NotImplementedError

    def train_loader(self, config, data: TaskData, dataset, sampler, device: torch.device, generator: torch.Generator):
        """(training loader, which kind runs): a DataLoader over worker processes (`--loader workers`)."""
        if config.loader not in ("auto", "workers"):
            raise ConfigError(f"--loader {config.loader}: only classification has a device-side pipeline; "
                              "use --loader workers")
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                          generator=generator, collate_fn=data.collate_train,
                          pin_memory=device.type == "cuda"), "workers"

    def evaluator(self, dataset):
        """A fresh evaluator (`predict` / `update` / `summarize`, see `engine.Accuracy`) for `dataset`."""
        raise NotImplementedError

    def evaluate(self, model: nn.Module, loader, device: torch.device, amp: str, progress: bool = False) -> dict:
        """The one evaluation loop (`engine.evaluate`) with this task's evaluator."""
        from .engine import evaluate

        return evaluate(model, loader, device, amp, self.evaluator(loader.dataset), progress=progress)

    def summary_line(self, metrics: dict) -> str:
        """The result of an evaluation in one line (for the epoch log and the final report)."""
        return f"{self.primary} {metrics[self.primary]:.2f}"


class ClassificationTask(Task):
    """Image classification with the paper's recipe: timm augmentation, Mixup/CutMix, soft-target CE."""

    name = "classification"
    primary = "top1"
    finetune_hint = "--recipe finetune_small (the official weights of --model, a fine-tuning lr) or --pretrained"

    def __init__(self):
        self.mixup = None
        self.criterion: nn.Module | None = None
        self.num_classes = 0

    def build_data(self, config, train: bool = True) -> TaskData:
        # The training split is read either way: its class folders fix the label order.
        from ..data import build_dataset, collate_skip_bad, eval_transform, mixup_and_criterion, subset, train_transform
        from ..errors import DataError

        tf_train = train_transform(config.img_size, scale=config.scale, hflip=config.hflip, randaug=config.randaug,
                                   reprob=config.reprob)
        tf_eval = eval_transform(config.img_size, crop_pct=config.crop_pct)
        train_set = build_dataset(config.data, "train", tf_train, strict=config.strict_images, data_dir=config.data_dir)
        classes = list(train_set.classes)
        try:
            val = build_dataset(config.data, "val", tf_eval, classes=classes, strict=config.strict_images,
                                data_dir=config.data_dir)
        except DataError:
            if config.eval_every != 0:
                raise
            val = None  # e.g. ImageNet-22K pre-training: no evaluation during training (PAPER.md §3.3)
        notes = []
        for split, ds in (("train", train_set), ("val", val)):
            empty = getattr(ds, "empty_classes", [])
            if empty:
                notes.append(f"warning: {len(empty)} class folder(s) of the {split} split hold no images: "
                             f"{', '.join(empty[:10])}")
        self.num_classes = len(classes)
        self.mixup, self.criterion = mixup_and_criterion(
            len(classes), mixup=config.mixup, cutmix=config.cutmix, switch_prob=config.mixup_switch_prob,
            smoothing=config.smoothing)
        return TaskData(
            train=subset(train_set, config.train_subset, seed=config.seed), val=val, classes=classes,
            collate_train=functools.partial(collate_skip_bad, even=self.mixup is not None),
            collate_eval=collate_skip_bad, notes=notes, pair_multiple=2 if self.mixup is not None else 1,
        )

    def build_model(self, config, data: TaskData) -> nn.Module:
        """Registry entry + overrides + the paper's drop path for the model (weights: see the trainer)."""
        return self.create_model(config, len(data.classes), spec_drop_path=True)

    def loss(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, device: torch.device):
        images = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)  # soft targets (B, num_classes)
        return self.criterion(model(images), targets)

    def train_loader(self, config, data: TaskData, dataset, sampler, device: torch.device, generator: torch.Generator):
        """`--loader`: workers (DataLoader + PIL), or decode once and augment batched on the device."""
        kind = config.loader
        if kind == "auto" and device.type != "cuda":
            kind = "workers"  # on CPU the DataLoader keeps the exact PIL pipeline of the recipe
        if kind == "workers":
            return super().train_loader(config, data, dataset, sampler, device, generator)
        from ..data.device_loader import DeviceAugment, build_loader

        augment = DeviceAugment(config.img_size, scale=config.scale, hflip=config.hflip, randaug=config.randaug,
                                reprob=config.reprob)
        return build_loader(kind, dataset, batch_size=config.batch_size, sampler=sampler, device=device,
                            augment=augment, seed=config.seed, num_workers=config.num_workers, generator=generator,
                            even=data.pair_multiple == 2)

    def evaluator(self, dataset):
        from .engine import Accuracy

        return Accuracy(self.num_classes)  # top-5 of 5 classes or fewer is always 100%: reported as None

    def summary_line(self, metrics: dict) -> str:
        line = f"top-1 {metrics['top1']:.2f}%"
        if metrics.get("top5") is not None:
            line += f"  top-5 {metrics['top5']:.2f}%"
        return line


# Tasks by name (the names are declared in `config.CHOICES["task"]`); dense tasks add themselves.
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def register_task(name: str, cls: type[Task]) -> type[Task]:
    """Make `cls` the task `--task NAME` runs; a name is registered once (re-registering the same class is a no-op)."""
    from .config import CHOICES

    if name not in CHOICES["task"]:
        raise ValueError(f"task {name!r} is not declared in convnext.train.config.CHOICES['task']")
    if TASKS.get(name, cls) is not cls:
        raise ValueError(f"task {name!r} is already registered ({TASKS[name].__module__}.{TASKS[name].__name__})")
    TASKS[name] = cls
    return cls


def task_of_model(model: str) -> str:
    """The task a registered model name implies (classification for unknown names)."""
    from ..models import get_spec

    try:
        return get_spec(model).task
    except KeyError:
        return "classification"


def get_task(name: str) -> Task:
    if name not in TASKS:
        from .._providers import load_task

        load_task(name)  # a task the top layer registered lazily (convnext/_registry_plugins.py)
    if name not in TASKS:
        from .config import CHOICES

        if name in CHOICES["task"]:
            raise ConfigError(f"--task {name}: not registered (the module that registers it was not imported; "
                              "the `convnext` command and `import convnext` register every task)")
        raise ConfigError(f"--task must be one of {', '.join(CHOICES['task'])}, got {name!r}")
    return TASKS[name]()
