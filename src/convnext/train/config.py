"""Typed training configuration and YAML recipes (STYLE.md principle 7).

The defaults of `TrainConfig` *are* the paper's ImageNet-1K recipe (Table 5; PAPER.md §3.1, §3.3).
A recipe in `convnext/recipes/NAME.yaml` holds only its differences from these defaults, and
command-line flags override the recipe. The resolved config is written to the run folder
(`config.yaml`) and stored in every checkpoint.
"""
from __future__ import annotations

import dataclasses
import functools
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import ConfigError

__all__ = ["TrainConfig", "CHOICES", "choice_help", "given_fields", "replace_config", "list_recipes",
           "recipe_description", "recipe_keys", "is_shipped_recipe", "load_recipe", "load_config", "config_to_dict",
           "save_config_yaml"]

# The choice fields of TrainConfig, declared once: this table drives validation (`TrainConfig._validate`),
# the `--flag {a,b,c}` choices of `convnext train` and their help text. Adding a choice is one line here
# plus its implementation (a schedule in schedule.py, a task registered with `tasks.register_task`).
CHOICES: dict[str, dict[str, str]] = {
    "task": {
        "classification": "image folders / digits / CIFAR (top-1)",
        "detection": "COCO-format JSON, Mask R-CNN / Cascade Mask R-CNN (box AP)",
        "segmentation": "ADE20K-layout folders, UperNet (mIoU)",
    },
    "loader": {
        "auto": "device on CUDA when the decoded set fits in a quarter of free GPU memory, else dali for a JPEG "
                "folder when DALI imports, else workers (workers on CPU)",
        "workers": "DataLoader worker processes + PIL (the recipe's exact pipeline)",
        "device": "decode once, augment batched on the device (GPU-resident for small sets)",
        "dali": "NVIDIA DALI reads image folders, decodes the crop window (nvJPEG on CUDA), resizes, flips; "
                "the rest as device",
    },
    "amp": {"bf16": "bfloat16 autocast", "fp16": "float16 autocast with loss scaling", "off": "fp32"},
    "schedule": {
        "cosine": "linear warm-up from 0, half-cosine to min_lr (classification)",
        "step": "mmdet: warm-up from warmup_ratio, x0.1 at each of lr_milestones (detection)",
        "poly": "mmseg: warm-up from warmup_ratio, linear decay to min_lr (segmentation)",
    },
}


def choice_help(name: str) -> str:
    """`a: what a does; b: ...` for a choice field (its --help text)."""
    return "; ".join(f"{k}: {v}" for k, v in CHOICES[name].items())


def _f(default: Any, help: str) -> Any:
    """A dataclass field whose help text doubles as its documentation and its `--flag` help."""
    if isinstance(default, (dict, list, tuple)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    # --- task and data -----------------------------------------------------------------------
    task: str | None = _f(None, "what is trained (None = implied by --model)")
    data: str = _f("digits", "dataset: a folder with train/ and val/ (or test/), or digits | cifar10 | cifar100")
    data_dir: str | None = _f(None, "where cifar10/cifar100 are downloaded (default ~/.cache/convnext/data)")
    strict_images: bool = _f(False, "fail on an unreadable image instead of skipping it (skips are counted)")
    train_subset: int | None = _f(None, "use only the first N images of a fixed shuffle of the training set")
    num_workers: int = _f(4, "data-loading worker processes per device (0 = load in the main process; "
                          "capped by the CPUs available)")
    loader: str = _f("auto", "training input pipeline")
    drop_last: bool = _f(True, "leave out the images that do not fill the last batch of an epoch (the official "
                         "recipe; a different set each epoch); --no-drop-last trains on a short last batch")
    # --- model -------------------------------------------------------------------------------
    model: str = _f("convnext_tiny", "registered model name (see `convnext models`)")
    model_overrides: dict = _f({}, "extra config fields for create_model, e.g. {stem_patch_size: 1}")
    num_classes: int | None = _f(None, "segmentation: number of classes (None = from classes.txt or the labels)")
    drop_path: float | None = _f(None, "stochastic depth of the last block (None = the paper's value for the model)")
    layer_scale: float | None = _f(None, "layer-scale init value (None = the model's default, 1e-6; 0 = off)")
    head_init_scale: float | None = _f(None, "scale of the freshly initialised head (paper: 0.001 when fine-tuning)")
    grad_checkpointing: bool = _f(False, "recompute block activations in the backward pass to save memory")
    compile: bool = _f(False, "torch.compile the training forward/backward (inductor); the first steps compile")
    pretrained: bool = _f(False, "start from the official weights of --model (pretrained registry, downloaded once; "
                          "the head is re-initialised for this data set)")
    # --- optimisation: AdamW, linear warm-up + cosine, per iteration (paper Table 5) ---------
    epochs: int = _f(300, "training epochs")
    batch_size: int = _f(128, "images per device per forward pass")
    accum_steps: int = _f(1, "gradient-accumulation steps; effective batch = batch_size x devices x accum_steps")
    lr: float | None = _f(None, "absolute peak learning rate; None = base_lr x effective_batch / lr_base_batch")
    base_lr: float = _f(4e-3, "peak learning rate at an effective batch of lr_base_batch")
    lr_base_batch: int = _f(4096, "effective batch at which base_lr is given (4096 for training, 512 for fine-tuning)")
    min_lr: float = _f(1e-6, "final learning rate of the cosine schedule")
    warmup_epochs: float = _f(20, "linear warm-up from 0, in epochs")
    warmup_steps: int | None = _f(None, "linear warm-up in optimizer steps, instead of warmup_epochs "
                                  "(detection 500 / segmentation 1500 as mmdet/mmseg)")
    warmup_ratio: float = _f(0.0, "lr at the start of warm-up, as a fraction of the peak (step/poly schedules)")
    schedule: str = _f("cosine", "lr schedule, per optimizer step")
    lr_milestones: tuple = _f((), "where the step schedule multiplies the lr by 0.1, as fractions of the run "
                              "(3x detection: 0.75 0.9167 = epochs 27 and 33 of 36)")
    weight_decay: float = _f(0.05, "AdamW weight decay (never on biases, norms and layer scale)")
    betas: tuple = _f((0.9, 0.999), "AdamW betas")
    eps: float = _f(1e-8, "AdamW epsilon")
    layer_decay: float | None = _f(None, "layer-wise lr decay factor (paper: 0.8 for 22K->1K, 0.7 for 1K->384)")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value (None = no clipping)")
    ema: bool = _f(True, "keep an exponential moving average of the weights and evaluate it")
    ema_decay: float = _f(0.9999, "EMA decay per optimizer step")
    amp: str = _f("off", "mixed precision")
    fsdp: bool = _f(False, "shard parameters, gradients and optimizer state with FSDP (multi-device, large models)")
    # --- augmentation and regularisation (timm data utilities, paper Table 5) ----------------
    img_size: int = _f(224, "training and evaluation resolution")
    crop_pct: float | None = _f(None, "evaluation centre-crop fraction (None = 0.875 below 384, 1.0 from 384)")
    scale: tuple = _f((0.08, 1.0), "RandomResizedCrop area range")
    hflip: float = _f(0.5, "horizontal-flip probability")
    randaug: str | None = _f("rand-m9-mstd0.5-inc1", "timm RandAugment policy (None = off)")
    reprob: float = _f(0.25, "random-erasing probability (pixel mode, one box)")
    mixup: float = _f(0.8, "Mixup alpha (0 = off)")
    cutmix: float = _f(1.0, "CutMix alpha (0 = off)")
    mixup_switch_prob: float = _f(0.5, "probability of CutMix instead of Mixup when both are on")
    smoothing: float = _f(0.1, "label smoothing (folded into the soft targets under Mixup/CutMix)")
    # --- run ---------------------------------------------------------------------------------
    recipe: str | None = _f(None, "the recipe this config was resolved from: a shipped name or the YAML file given")
    finetune: str | None = _f(None, "checkpoint to fine-tune from (any layout); the head is re-initialised")
    resume: str | None = _f(None, "checkpoint to resume, or 'auto' for OUTPUT/checkpoint-last.pt if present")
    overwrite: bool = _f(False, "start afresh in a run folder that already holds a run (its checkpoints, metrics "
                         "and logs are deleted); without it such a folder is refused")
    adapt: bool = _f(True, "adapt defaults that cannot make sense for this run (warm-up longer than the run, an EMA "
                     "horizon beyond it, a batch larger than the data...); each change is printed and recorded in "
                     "config.yaml. --no-adapt keeps every value as resolved")
    output: str | None = _f(None, "run folder (None = runs/<recipe or data>-<model>)")
    seed: int = _f(0, "random seed (each rank adds its rank)")
    eval_every: int = _f(1, "evaluate every N epochs (0 = only after the last epoch)")
    device: str | None = _f(None, "cuda | cpu | cuda:N (None = cuda if available, else cpu)")
    threads: int | None = _f(None, "CPU threads for torch ops (None = the CPUs left by the loader workers: "
                             "max(1, CPUs - workers), said as an adapted line; torch's default without --adapt)")
    deterministic: bool = _f(False, "deterministic algorithms (slower; for exact reproducibility tests)")
    progress: bool = _f(True, "show a tqdm progress bar")

    def __post_init__(self):
        self._coerce_types()
        self._validate()

    def _validate(self) -> None:
        """Every value against its allowed range, before any work (one ConfigError naming the flag)."""
        for name, ok, allowed in _RULES:
            value = getattr(self, name)
            if value is not None and not ok(value):
                raise ConfigError(f"{_flag(name)} must be {allowed}, got {_show(value)}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{_flag(name)} must be one of {', '.join(allowed)}, got {value!r}")
        if any(not 0.0 < m <= 1.0 for m in self.lr_milestones):
            raise ConfigError(f"--lr-milestones must be fractions of the run in (0, 1], got {list(self.lr_milestones)}")
        if (self.mixup > 0 or self.cutmix > 0) and self.batch_size % 2:
            raise ConfigError(f"--batch-size must be even with Mixup/CutMix (they pair images), got {self.batch_size}")
        if self.pretrained and self.finetune:
            raise ConfigError("--pretrained and --finetune both choose the starting weights: give only one")
        for key, value in self.model_overrides.items():
            if key in ("depths", "dims") and not (
                isinstance(value, (list, tuple)) and value and all(isinstance(v, int) and v >= 1 for v in value)
            ):
                raise ConfigError(f"--model-overrides: {key} must be a list of integers >= 1, got {_show(value)}")
            if key in ("depth", "dim", "kernel_size", "stem_patch_size", "in_chans") and not (
                isinstance(value, int) and not isinstance(value, bool) and value >= 1
            ):
                raise ConfigError(f"--model-overrides: {key} must be an integer >= 1, got {_show(value)}")

    def _coerce_types(self) -> None:
        """Check every value against its annotation; YAML's "1e-6" (a string in YAML 1.1) becomes a float."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp, optional = cli_type(f.name)
            if value is None:
                if not optional:
                    raise ConfigError(f"{_flag(f.name)} must not be null")
                continue
            try:
                if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
                    value = float(value)
                elif tp is int and isinstance(value, str):
                    value = int(value)
                elif tp is tuple and isinstance(value, (list, tuple)):
                    value = tuple(float(v) for v in value)
            except ValueError:
                raise ConfigError(f"{_flag(f.name)}: expected a {tp.__name__}, got {value!r}") from None
            if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
                raise ConfigError(f"{_flag(f.name)}: expected a {tp.__name__}, got {value!r} ({type(value).__name__})")
            setattr(self, f.name, value)

    @classmethod
    def from_recipe(cls, recipe: str | None = None, **overrides: Any) -> "TrainConfig":
        """The paper's defaults, then the recipe's differences, then `overrides` (e.g. CLI flags)."""
        return load_config(recipe, **overrides)


# Which fields the caller set: `TrainConfig(lr=0.1)` sets lr; `load_config` records the flags given and
# the keys of the user's own YAML file (not a shipped recipe's). Only the other fields may be adapted to
# the data (`adapt.py`) or taken from a resumed checkpoint. `dataclasses.replace` would mark every field
# as set; `replace_config` keeps the record.
_dataclass_init = TrainConfig.__init__


@functools.wraps(_dataclass_init)
def _init_recording_given(self, *args, **kwargs):
    _dataclass_init(self, *args, **kwargs)
    positional = [f.name for f in dataclasses.fields(TrainConfig)][: len(args)]
    self.__dict__["_given"] = frozenset(positional) | frozenset(kwargs)


TrainConfig.__init__ = _init_recording_given


def given_fields(config: TrainConfig) -> frozenset[str]:
    """The fields the user set (see `_init_recording_given`)."""
    return config.__dict__.get("_given", frozenset())


def replace_config(config: TrainConfig, **changes: Any) -> TrainConfig:
    """`dataclasses.replace` that keeps the record of which fields the user set."""
    new = dataclasses.replace(config, **changes)
    new.__dict__["_given"] = given_fields(config)
    return new


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _prob(v: float) -> bool:
    return 0.0 <= v <= 1.0


# (field, check, what is allowed): the allowed ranges of every numeric option, checked once in
# `TrainConfig._validate`. None always passes (it means "off" or "the default" for optional fields).
_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("epochs", lambda v: v >= 1, ">= 1"),
    ("batch_size", lambda v: v >= 1, ">= 1"),
    ("accum_steps", lambda v: v >= 1, ">= 1"),
    ("num_workers", lambda v: v >= 0, ">= 0"),
    ("train_subset", lambda v: v >= 1, ">= 1 (or none for the whole set)"),
    ("num_classes", lambda v: v >= 1, ">= 1 (or none: from the labels)"),
    ("drop_path", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("layer_scale", lambda v: v >= 0.0, ">= 0 (0 = off)"),
    ("head_init_scale", lambda v: v > 0.0, "> 0"),
    ("lr", lambda v: v >= 0.0, ">= 0 (or none for base_lr scaling)"),
    ("base_lr", lambda v: v > 0.0, "> 0"),
    ("lr_base_batch", lambda v: v >= 1, ">= 1"),
    ("min_lr", lambda v: v >= 0.0, ">= 0"),
    ("warmup_epochs", lambda v: v >= 0.0, ">= 0"),
    ("warmup_steps", lambda v: v >= 0, ">= 0"),
    ("warmup_ratio", lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
    ("weight_decay", lambda v: v >= 0.0, ">= 0"),
    ("betas", lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two values in [0, 1)"),
    ("eps", lambda v: v > 0.0, "> 0"),
    ("layer_decay", lambda v: 0.0 < v <= 1.0, "in (0, 1] (or none for no layer decay)"),
    ("clip_grad", lambda v: v > 0.0, "> 0 (or none for no clipping)"),
    ("ema_decay", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("img_size", lambda v: v >= 8, ">= 8"),
    ("crop_pct", lambda v: 0.0 < v <= 1.0, "in (0, 1]"),
    ("scale", lambda v: len(v) == 2 and 0.0 < v[0] <= v[1] <= 1.0, "two values 0 < min <= max <= 1"),
    ("hflip", _prob, "a probability in [0, 1]"),
    ("reprob", _prob, "a probability in [0, 1]"),
    ("mixup", lambda v: v >= 0.0, ">= 0 (0 = off)"),
    ("cutmix", lambda v: v >= 0.0, ">= 0 (0 = off)"),
    ("mixup_switch_prob", _prob, "a probability in [0, 1]"),
    ("smoothing", lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    ("seed", lambda v: v >= 0, ">= 0"),
    ("eval_every", lambda v: v >= 0, ">= 0 (0 = only after the last epoch)"),
    ("threads", lambda v: v >= 1, ">= 1 (or none for torch's default)"),
)


@functools.lru_cache(maxsize=None)
def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(TrainConfig)


def _check_keys(d: dict, where: str) -> None:
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(d) - names)
    if unknown:
        import difflib

        hints = [f"{k} (did you mean {difflib.get_close_matches(k, names, 1)[0]}?)"
                 if difflib.get_close_matches(k, names, 1) else k for k in unknown]
        raise ConfigError(f"{where}: unknown training option(s): {', '.join(hints)}")


def _recipe_dir():
    return resources.files("convnext") / "recipes"


def list_recipes() -> list[str]:
    """Names of the recipes shipped in `convnext/recipes/`."""
    return sorted(p.name[:-5] for p in _recipe_dir().iterdir() if p.name.endswith(".yaml"))


def is_shipped_recipe(name: str | None) -> bool:
    """True for the name of a recipe in `convnext/recipes/` (a user's `x/digits.yaml` is not `digits`)."""
    return name is not None and not name.endswith((".yaml", ".yml")) and name in list_recipes()


def recipe_keys(name: str | None) -> set[str]:
    """The options a shipped recipe sets (kept as written, but for a warm-up longer than the run: `adapt.py`)."""
    return set(load_recipe(name)) if is_shipped_recipe(name) else set()


def recipe_description(name: str) -> str:
    """The first sentence of a shipped recipe's leading comment (its one-line description)."""
    lines = []
    for line in (_recipe_dir() / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    text = " ".join(lines)
    end = text.find(". ")
    text = text[: end + 1] if end >= 0 else text
    if len(text) > 110 and ": " in text:  # keep the part before the details
        text = text[: text.find(": ")]
    return text


def load_recipe(name_or_path: str) -> dict:
    """The differences a recipe makes to the defaults, from a shipped name or a YAML file path."""
    path = Path(name_or_path)
    if path.is_dir():
        raise ConfigError(f"--recipe {path}: is a directory; expected a recipe name or a YAML file")
    if path.suffix in (".yaml", ".yml") and path.exists():
        try:
            text, where = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"--recipe {path}: cannot be read ({e.__class__.__name__}: {e})") from None
    elif path.suffix in (".yaml", ".yml"):
        raise ConfigError(f"--recipe {path}: no such file")
    else:
        res = _recipe_dir() / f"{name_or_path}.yaml"
        if not res.is_file():
            import difflib

            close = difflib.get_close_matches(name_or_path, list_recipes(), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ConfigError(f"--recipe: unknown recipe {name_or_path!r}.{hint} "
                              "Shipped recipes: `convnext train --list-recipes`")
        text, where = res.read_text(), f"recipe {name_or_path}"
    try:
        d = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:  # includes tags such as !!python/object, which the safe loader refuses
        first = str(e).strip().splitlines()[0]
        raise ConfigError(f"{where}: not a plain YAML mapping of training options ({first})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of training options, got {type(d).__name__}")
    _check_keys(d, where)
    return d


def load_config(recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """Resolve defaults <- recipe <- overrides into a `TrainConfig` (an override of None sets None)."""
    values: dict[str, Any] = {}
    given = set(overrides)
    if recipe is not None:
        values.update(load_recipe(recipe))
        if not is_shipped_recipe(recipe):  # the user's own YAML file: its keys are theirs
            given |= set(values)
        values["recipe"] = recipe
    _check_keys(overrides, "overrides")
    if "model_overrides" in overrides:  # merge with the recipe's stem adaptation etc.
        overrides["model_overrides"] = {**values.get("model_overrides", {}), **overrides["model_overrides"]}
    if overrides.get("finetune") and "pretrained" not in overrides:
        values["pretrained"] = False  # a file given on the command line replaces the recipe's --pretrained
    values.update(overrides)
    config = TrainConfig(**values)
    config.__dict__["_given"] = frozenset(given)
    return config


def config_to_dict(config: TrainConfig) -> dict:
    """Plain YAML/checkpoint-safe dict (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def save_config_yaml(config: TrainConfig, path: str | Path, extra: dict | None = None) -> None:
    d = config_to_dict(config)
    if extra:
        d = {**d, "resolved": extra}
    Path(path).write_text(yaml.safe_dump(d, sort_keys=False))


def config_from_dict(d: dict) -> TrainConfig:
    d = {k: v for k, v in d.items() if k not in ("resolved", "resumed")}
    _check_keys(d, "train config")
    config = TrainConfig(**d)
    config.__dict__["_given"] = frozenset()
    return config


def cli_type(name: str) -> tuple[type, bool]:
    """(scalar type, optional) of a TrainConfig field, for building `--flags`."""
    tp = _field_types()[name]
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = args[0]
    return tp, optional
