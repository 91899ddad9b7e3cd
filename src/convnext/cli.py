"""The `convnext` console command. Each subcommand is a plain function; feature packages
contribute theirs through a `register(subparsers)` function in the module named in `_COMMANDS`.

Start-up cost: importing torch takes seconds, so the parser is built lazily. `convnext --help`
(and an unknown command) imports only argparse and this table; `convnext CMD ...` imports the one
module that registers CMD. Modules registering commands keep torch imports inside their functions.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main", "build_parser", "UserError"]


from .errors import ConfigError, UserError

# Every subcommand: the module whose `register(subparsers)` adds it, and its line in `convnext --help`.
_COMMANDS: dict[str, tuple[str, str]] = {
    "models": ("convnext.cli", "list registered models with params, GFLOPs at their paper resolution and paper top-1"),
    "flops": ("convnext.cli", "multiply-accumulates of a model at a resolution"),
    "convert": ("convnext.weights.cli", "convert a checkpoint between official/timm/torchvision/HF layouts"),
    "export": ("convnext.inference.cli", "export a model with its weights to ONNX, TorchScript, OpenVINO or int8 "
                                        "(parity-checked)"),
    "predict": ("convnext.inference.cli", "top-k classes, detections or class maps of images with a checkpoint"),
    "train": ("convnext.train.cli", "train with the paper's recipe (no arguments: built-in digits, about a minute on a CPU)"),
    "eval": ("convnext.inference.cli", "metrics of a checkpoint on a dataset (top-1/top-5, COCO AP, mIoU)"),
    "roadmap": ("convnext.roadmap.cli",
                "the ResNet -> ConvNeXt modernization roadmap: list its steps or rerun it on a dataset"),
    "bench": ("convnext.bench.cli",
              "time our ConvNeXt against timm / torchvision with identical weights (or the input pipeline)"),
}


_TASKS = ("classification", "detection", "segmentation", "all")
_ROADMAP_PREFIX = "roadmap_"  # the roadmap ladder's networks, `convnext roadmap --list` lists them


def _shown_models(pattern: str | None, task: str | None) -> tuple[list[str], list[str]]:
    """(names to list, kinds left out). Without a pattern or --task: the classification family only
    (ConvNeXt, isotropic, V2), found without importing the dense and roadmap modules."""
    from .models import get_spec, list_models

    if task is None and pattern is None:
        names = list_models(arch="convnext") + list_models(arch="isotropic")
        return names, ["roadmap", "detection", "segmentation"]
    names = list_models(pattern)
    if task == "all" or task is None:
        return names, []
    shown = [n for n in names if get_spec(n).task == task]
    return shown, []


def _reference_size(spec) -> tuple[float, float] | None:
    """(params M, GMACs at spec.flops_size) from the registry's reference numbers, or None."""
    gmacs = spec.ref_gmacs if spec.ref_gmacs is not None else (
        spec.gmacs.get(spec.flops_size[0]) if spec.flops_size[0] == spec.flops_size[1] else None)
    return (spec.params_m, gmacs) if spec.params_m is not None and gmacs is not None else None


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import get_spec

    names, left_out = _shown_models(args.filter, args.task)
    if not names:
        raise UserError(f"no registered model matches {args.filter or '*'!r}" + (f" with --task {args.task}"
                                                                                  if args.task else ""))
    sizes: dict[tuple, tuple[int, int]] = {}  # (config, resolution) -> (params, MACs): equal configs built once
    rows, counted = [], False
    for name in names:
        spec = get_spec(name)
        ref = _reference_size(spec)
        if ref is not None:  # the registry's numbers (tests/models/test_registry.py checks them): nothing built
            params, gmacs, mark = f"{ref[0]:.2f}", f"{ref[1]:.2f}", ""
        else:
            key = (spec.config, spec.flops_size)
            if key not in sizes:
                sizes[key] = _count(spec)
            params, gmacs, mark = f"{sizes[key][0] / 1e6:.2f}", f"{sizes[key][1] / 1e9:.2f}", "*"
            counted = True
        rows.append((
            name, spec.task, params + mark, gmacs + mark, "x".join(map(str, spec.flops_size)),
            f"{spec.top1:.1f}" if spec.top1 is not None else "-",
            f"{spec.top1_22k:.1f}" if spec.top1_22k is not None else "-",
        ))
    header = ("model", "task", "params (M)", "GFLOPs", "at HxW", "top-1 IN-1K", "top-1 22K->1K")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 2 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    print("\nParams and GFLOPs are the registry's reference numbers (paper, timm), which the test suite checks "
          "against the built networks" + ("; * = counted here on the built network (no reference)" if counted else "")
          + ". GFLOPs are multiply-accumulates of conv and linear layers (the paper's convention) at the paper's "
          "resolution for the task; top-1 is the paper's ImageNet-1K accuracy at 224 where reported.")
    if left_out:
        print(f"Not listed: the {', '.join(left_out)} models; see `convnext models --task "
              "detection|segmentation|all`, `convnext models 'roadmap_*'` or `convnext roadmap --list`.")
    return 0


def _count(spec) -> tuple[int, int]:
    """(params, MACs at spec.flops_size) of a model built on the meta device (no weights allocated)."""
    import torch

    from .models import build_model, count_flops, count_params

    with torch.device("meta"):
        model = build_model(spec.config)
    return count_params(model), count_flops(model, spec.flops_size)


def _cmd_flops(args: argparse.Namespace) -> int:
    if args.img_size is not None and args.img_size < 1:  # checked first: no torch import for a typo
        raise ConfigError(f"--img-size {args.img_size}: expected a positive image side in pixels, e.g. 224")
    import torch

    from .models import build_model, count_flops, count_params, get_spec

    spec = get_spec(args.model)  # UnknownModelError: one line with close names
    size = spec.flops_size if args.img_size is None else (args.img_size, args.img_size)
    with torch.device("meta"):
        model = build_model(spec.config)
    try:
        macs = count_flops(model, size)
    except ValueError as e:  # smaller than the network's total stride
        raise ConfigError(f"--img-size {args.img_size}: {e}") from None
    print(f"{args.model} @ {size[0]}x{size[1]}: {macs / 1e9:.3f} GFLOPs (MACs), "
          f"{count_params(model) / 1e6:.2f} M params")
    ref = spec.ref_gmacs if size == spec.flops_size and spec.ref_gmacs is not None else (
        spec.gmacs.get(size[0]) if size[0] == size[1] else None)
    if ref is not None:
        print(f"reference ({spec.source}): {ref} GFLOPs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models", help=_COMMANDS["models"][1],
        description="Without arguments: the classification family (ConvNeXt, isotropic, V2). A glob pattern "
                    "lists every task's matching models; --task picks one task (or all). Params and MACs are "
                    "the registry's reference numbers; models without them are counted on the built network "
                    "(meta device: no weights allocated).",
    )
    p.add_argument("filter", nargs="?", default=None, help="glob pattern, e.g. 'convnext_*' or 'mask_rcnn_*'")
    p.add_argument("--task", choices=_TASKS, default=None,
                   help="only this task's models (default: classification, or every task when a pattern is given)")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("flops", help=_COMMANDS["flops"][1])
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=None,
                   help="square input side (default: the model's paper resolution, e.g. 224, or 800x1280 for detection)")
    p.set_defaults(func=_cmd_flops)


def _requested_command(argv: list[str]) -> str | None:
    """The subcommand named on the command line: the first token that is not an option."""
    return next((a for a in argv if not a.startswith("-")), None)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `convnext` parser, complete for `command`; every other subcommand is a stub with its help line.

    With `command=None` nothing beyond argparse is imported (enough for `convnext --help`).
    """
    from . import __version__

    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt models, training and tools.")
    parser.add_argument("--version", action="version", version=f"convnext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    module_name = _COMMANDS[command][0] if command in _COMMANDS else None
    if module_name is not None:
        try:
            module = importlib.import_module(module_name) if module_name != __name__ else sys.modules[__name__]
        except ModuleNotFoundError as e:
            if e.name and module_name.startswith(e.name):  # feature package not in this build
                parser.error(f"command {command!r} is not available in this installation ({e})")
            raise
        module.register(sub)
    for name, (mod, help_line) in _COMMANDS.items():
        if mod != module_name:  # only listed: its module is imported when it is the command given
            sub.add_parser(name, help=help_line, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_requested_command(argv))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"convnext {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("CONVNEXT_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, UserError) else str(e)
        print(f"convnext {args.command}: error: {msg}", file=sys.stderr)
        return 2
