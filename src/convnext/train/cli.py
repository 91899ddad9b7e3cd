"""`convnext train` and `convnext eval`. Every `TrainConfig` field is a `--flag` (litgpt style)."""
from __future__ import annotations

import argparse
import dataclasses
import sys

import yaml

from .config import TrainConfig, cli_type

__all__ = ["register"]

# Flags listed first in --help, in the order of the CLI contract; the rest follow.
_FIRST = ("data", "model", "recipe", "epochs", "batch_size", "img_size", "accum_steps", "lr", "output", "resume",
          "finetune", "amp", "seed")


_CHOICES = {"task": ("classification", "detection", "segmentation"), "schedule": ("cosine", "step", "poly"),
            "loader": ("auto", "workers", "device", "dali")}

_CLI_HELP = {
    "recipe": "shipped recipe name (--list-recipes) or a YAML file, applied before the other flags "
              "(default: `digits` for the built-in digits, otherwise the paper's ImageNet-1K defaults)",
}


def _mapping(text: str) -> dict:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not YAML: {e}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a mapping like '{{stem_patch_size: 1}}', got {text!r}")
    bad = [k for k, v in value.items() if v is None]
    if bad:  # '{stem_patch_size:2}' is YAML for the key 'stem_patch_size:2' with no value
        raise argparse.ArgumentTypeError(f"no value for {', '.join(map(repr, bad))}; write 'key: value' (with a space)")
    return value


def _optional(tp):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else tp(text)

    parse.__name__ = tp.__name__
    return parse


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in list(_FIRST) + [n for n in fields if n not in _FIRST]:
        f = fields[name]
        flag = "--" + name.replace("_", "-")
        tp, optional = cli_type(name)
        help_text = _CLI_HELP.get(name, f.metadata["help"])
        kw = dict(default=argparse.SUPPRESS, help=help_text, dest=name)  # absent = keep the recipe's value
        if tp is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif tp is dict:
            p.add_argument(flag, type=_mapping, metavar="YAML", **kw)
        elif tp is tuple and name == "lr_milestones":
            p.add_argument(flag, type=float, nargs="*", metavar="EPOCH", **kw)
        elif tp is tuple:
            p.add_argument(flag, type=float, nargs=2, metavar=("A", "B"), **kw)
        elif name in _CHOICES:
            p.add_argument(flag, choices=_CHOICES[name], **kw)
        elif name == "amp":
            p.add_argument(flag, choices=("bf16", "fp16", "off"), **kw)
        else:
            metavar = {int: "N", float: "X"}.get(tp, name.upper())
            p.add_argument(flag, type=_optional(tp) if optional else tp, metavar=metavar, **kw)


def _default_recipe(overrides: dict) -> str | None:
    """The recipe implied when none is given: the built-in digits one for `convnext train` with no
    --data, the paper's detection / segmentation settings for a dense task; else the defaults."""
    if overrides.get("data", "digits") == "digits" and overrides.get("task") in (None, "classification"):
        return "digits"  # `convnext train` with no arguments: the built-in small-data recipe
    task = overrides.get("task")
    if task is None and "model" in overrides:
        from .tasks import task_of_model

        task = task_of_model(overrides["model"])
    return {"detection": "coco_detection", "segmentation": "ade20k_segmentation"}.get(task)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..errors import UserError
    from . import list_recipes, load_config, run
    from .engine import NonFiniteLossError

    if args.list_recipes:
        from .config import recipe_description

        names = list_recipes()
        width = max(len(n) for n in names)
        for name in names:
            print(f"{name:<{width}}  {recipe_description(name)}")
        return 0
    # Only the flags given on the command line override the recipe ("none" sets a field to None).
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    recipe = overrides.pop("recipe", None)
    if recipe is None:
        recipe = _default_recipe(overrides)
    try:
        config = load_config(recipe, **overrides)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    # The flags given on the command line: only the others may be adapted to the data or taken
    # from a resumed run's checkpoint.
    explicit = set(overrides) | ({"recipe"} if recipe is not None else set())
    try:
        metrics = run(config, explicit=explicit)
    except NonFiniteLossError as e:
        print(f"convnext train: stopped: {e}", file=sys.stderr)
        return 1
    except ValueError as e:  # DataError, bad model/override, unusable checkpoint
        raise UserError(str(e)) from None
    return 0 if metrics is not None else 1


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..devices import set_threads
    from ..errors import UserError

    set_threads(args.threads)
    if args.benchmark is not None:  # robustness benchmarks (Table 8): convnext.train.robustness
        from .robustness import cmd_benchmark

        return cmd_benchmark(args)
    if args.partial:
        raise UserError("--partial applies to --benchmark runs only")
    from ..dense.infer import read_dense_checkpoint

    dense = read_dense_checkpoint(args.checkpoint)
    if dense is not None:
        return _eval_dense(args, dense)
    if args.json:
        raise UserError("--json applies to --benchmark runs and detection/segmentation checkpoints only")
    if args.multi_scale:
        raise UserError("--multi-scale applies to segmentation checkpoints only")
    from .evaluate import evaluate_checkpoint

    try:
        res = evaluate_checkpoint(
            args.checkpoint, args.data, img_size=args.img_size, crop_pct=args.crop_pct, batch_size=args.batch_size or 100,
            weights=args.weights, model_name=args.model, num_workers=args.num_workers, amp=args.amp,
            device=args.device, data_dir=args.data_dir, strict_images=args.strict_images, progress=args.progress,
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    from ..weights.io import printable

    if res["skipped_images"]:  # as training reports them; --strict-images fails on the first instead
        print(f"convnext eval: warning: {res['skipped_images']} unreadable image(s) skipped "
              f"(--strict-images fails on the first, naming it)", file=sys.stderr)
    print(printable(f"{res['checkpoint']} ({res['weights']} weights) on {res['data']} at {res['img_size']}px, "
                    f"{res['images']} images: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
                    f"loss {res['loss']:.4f}"))
    return 0


def _eval_dense(args: argparse.Namespace, ckpt: dict) -> int:
    """`convnext eval` of a detector / segmenter: COCO AP or mIoU on the validation split of --data."""
    import json

    from ..dense.infer import evaluate_dense, load_dense
    from ..devices import resolve_device
    from ..weights.io import printable

    dev = resolve_device(args.device)
    dense = load_dense(args.checkpoint, weights=args.weights, device=dev, ckpt=ckpt)
    res = evaluate_dense(dense, args.data, img_size=args.img_size,
                         batch_size=args.batch_size or int(dense.train_config.get("batch_size", 2)),
                         num_workers=args.num_workers, device=dev, amp=args.amp, multiscale=args.multi_scale)
    head = f"{args.checkpoint} ({dense.weights} weights, {dense.task}) on {args.data}, {res['images']} images"
    if dense.task == "detection":
        rows = [(kind, [res.get(f"{kind}_{k}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")])
                for kind in ("bbox", "segm") if f"{kind}_AP" in res]
        print(printable(head))
        print("        AP     AP50   AP75   APs    APm    APl")
        for kind, vals in rows:
            print(f"{kind:<5}" + "".join(f" {v:6.2f}" if v is not None else "      -" for v in vals))
    else:
        print(printable(f"{head}: mIoU {res['mIoU']:.2f}  aAcc {res['aAcc']:.2f}  mAcc {res.get('mAcc', float('nan')):.2f}"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train with the paper's recipe (no arguments: built-in digits, about a minute on a CPU)",
        description="Train a ConvNeXt. Defaults are the paper's ImageNet-1K recipe; --recipe NAME applies a "
                    "shipped recipe (see --list-recipes) and any flag overrides it. With no --data, the built-in "
                    "digits dataset and its `digits` recipe are used. Run under torchrun for multi-GPU/multi-node.",
    )
    p.add_argument("--list-recipes", action="store_true", help="print the shipped recipe names and exit")
    _add_config_flags(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint with the paper's evaluation preprocessing")
    p.add_argument("--checkpoint", required=True, help="a `convnext train` checkpoint (or any layout with --model)")
    p.add_argument("--data", required=True,
                   help="folder with val/ (or test/) class folders, or digits | cifar10 | cifar100")
    p.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: the training one)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="centre-crop fraction (default 0.875 below 384, 1.0 from 384)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default 100; detection/segmentation: the training run's, since padding "
                        "to the largest image of a batch changes the numbers slightly)")
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
                   help="which weights of a checkpoint holding both: auto (default) = those its reported "
                        "accuracy belongs to (EMA when trained with EMA)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--model", default=None, help="model name, needed for checkpoints without a model config")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default="off")
    p.add_argument("--device", default=None)
    p.add_argument("--data-dir", default=None, help="where cifar10/cifar100 are downloaded")
    p.add_argument("--strict-images", action="store_true", help="fail on unreadable images instead of skipping them")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--benchmark", default=None, metavar="NAME",
                   help="robustness benchmark of the paper's Table 8, --data being its folder: "
                        "imagenet-c | imagenet-a | imagenet-r | imagenet-sketch")
    p.add_argument("--multi-scale", action="store_true",
                   help="segmentation: mIoU over 6 scales (0.5-1.75) and flips, the paper's main ADE20K metric")
    p.add_argument("--json", default=None, metavar="FILE", help="with --benchmark or a detection/segmentation checkpoint: also write the result as JSON")
    p.add_argument("--partial", action="store_true",
                   help="with --benchmark: score the corruptions/severities/classes present instead of failing "
                        "on missing ones (the result is marked partial and lists them)")
    p.set_defaults(func=_cmd_eval)
