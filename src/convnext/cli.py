"""The `convnext` console command. Each subcommand is a plain function; feature packages
contribute theirs through a `register(subparsers)` function listed in `_COMMAND_MODULES`.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["main", "UserError"]


from .errors import UserError

# Modules that define `register(subparsers)`; each adds one or more subcommands.
_COMMAND_MODULES = (
    "convnext.cli",
    "convnext.weights.cli",
    "convnext.train.cli",
    "convnext.roadmap.cli",
    "convnext.bench.cli",
)


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import count_flops, count_params, get_spec, list_models
    import torch

    names = list_models(args.filter)
    if not names:
        raise UserError(f"no registered model matches {args.filter!r}")
    rows = []
    for name in names:
        spec = get_spec(name)
        with torch.device("meta"):  # no weights allocated: sizes and MACs only
            from .models import build_model

            model = build_model(spec.config)
        rows.append(
            (
                name,
                f"{count_params(model) / 1e6:.2f}",
                f"{count_flops(model, 224) / 1e9:.2f}",
                f"{spec.top1:.1f}" if spec.top1 is not None else "-",
                f"{spec.top1_22k:.1f}" if spec.top1_22k is not None else "-",
            )
        )
    header = ("model", "params (M)", "GFLOPs@224", "top-1 IN-1K", "top-1 22K->1K")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))
    print("\nGFLOPs are multiply-accumulates of conv and linear layers (the paper's convention); "
          "top-1 is the paper's ImageNet-1K accuracy at 224 where reported.")
    return 0


def _cmd_flops(args: argparse.Namespace) -> int:
    import torch

    from .models import build_model, count_flops, count_params, get_spec

    try:
        spec = get_spec(args.model)
    except KeyError as e:
        raise UserError(e.args[0]) from None
    with torch.device("meta"):
        model = build_model(spec.config)
    try:
        macs = count_flops(model, args.img_size)
    except ValueError as e:
        raise UserError(f"--img-size {args.img_size}: {e}") from None
    print(f"{args.model} @ {args.img_size}x{args.img_size}: {macs / 1e9:.3f} GFLOPs (MACs), "
          f"{count_params(model) / 1e6:.2f} M params")
    ref = spec.gmacs.get(args.img_size)
    if ref is not None:
        print(f"reference ({spec.source}): {ref} GFLOPs")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every registered model with params, GFLOPs and paper top-1")
    p.add_argument("filter", nargs="?", default=None, help="glob pattern, e.g. 'convnext_*'")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("flops", help="multiply-accumulates of a model at a resolution")
    p.add_argument("model")
    p.add_argument("--img-size", type=int, default=224)
    p.set_defaults(func=_cmd_flops)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="convnext", description="ConvNeXt models, training and tools.")
    parser.add_argument("--version", action="version", version=f"convnext {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod in _COMMAND_MODULES:
        try:
            module = importlib.import_module(mod) if mod != __name__ else sys.modules[__name__]
        except ModuleNotFoundError as e:
            if e.name and mod.startswith(e.name):  # feature package not in this build
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
