"""Flags several subcommands share (torch-free: building a parser imports nothing heavy)."""
from __future__ import annotations

import argparse
import sys

from .errors import UserError

__all__ = ["add_weights_flag", "weights_choice", "WEIGHTS_CHOICES"]

WEIGHTS_CHOICES = ("auto", "ema", "model")


def add_weights_flag(p: argparse.ArgumentParser, ema_alias: bool = True) -> None:
    """`--weights {auto,ema,model}` (and the deprecated `--ema`), shared by convert/export/predict/eval."""
    p.add_argument("--weights", choices=WEIGHTS_CHOICES, default="auto",
                   help="which weights of a checkpoint holding both: auto (default) = those its reported "
                        "accuracy belongs to (EMA when trained with EMA)")
    if ema_alias:
        p.add_argument("--ema", action="store_true", help="deprecated: same as --weights ema")


def weights_choice(args: argparse.Namespace) -> str:
    """`--weights`, with the deprecated `--ema` mapped onto it (and a one-line note)."""
    if getattr(args, "ema", False):
        print(f"convnext {args.command}: note: --ema is deprecated; use --weights ema", file=sys.stderr)
        if args.weights == "model":
            raise UserError("--ema contradicts --weights model; pass only --weights")
        return "ema"
    return args.weights
