"""`convnext train`. Every `TrainConfig` field is a `--flag` (litgpt style); `convnext eval` is in `convnext.inference`."""
from __future__ import annotations

import argparse
import dataclasses
import sys

import yaml

from .config import CHOICES, TrainConfig, choice_help, cli_type

__all__ = ["register"]

# Flags listed first in --help, in the order of the CLI contract; the rest follow.
_FIRST = ("data", "model", "recipe", "epochs", "batch_size", "img_size", "accum_steps", "lr", "output", "resume",
          "finetune", "amp", "seed")


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
        elif name in CHOICES:  # choices and their help from the one table (config.CHOICES)
            kw["help"] = f"{help_text} ({choice_help(name)})"
            p.add_argument(flag, choices=tuple(CHOICES[name]), **kw)
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
