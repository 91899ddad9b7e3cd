"""`convnext roadmap`: print the ladder (`--list`) or rerun the study on a dataset (`--data ... --output ...`)."""
from __future__ import annotations

import argparse
import sys

from ..errors import UserError

__all__ = ["register"]


def _parse_steps(text: str | None) -> list[str] | None:
    if text is None:
        return None
    from ..models.roadmap import STEP_NAMES

    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEP_NAMES]
    if unknown or not steps:
        raise UserError(f"--steps: unknown step(s) {', '.join(unknown) or '(none given)'}; "
                        f"expected a comma-separated subset of: {', '.join(STEP_NAMES)}")
    return steps


def _parse_sets(pairs: list[str]) -> dict:
    """`--set key=value` pairs -> dict, values parsed as YAML scalars (numbers, booleans, lists)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _cmd_roadmap(args: argparse.Namespace) -> int:
    from ..models.roadmap import REGIMES
    from .results import format_ladder, ladder

    if args.regime not in REGIMES:
        raise UserError(f"--regime {args.regime}: expected one of {', '.join(REGIMES)}")
    steps = _parse_steps(args.steps)
    if args.list:
        print(format_ladder(ladder(args.regime, steps)))
        table = "Table 10; its BN->LN row is 4.15, not the misprinted 4.46" if args.regime == "r50" else "Table 11"
        print(f"\nModels: roadmap_{args.regime}_<step>. GFLOPs are multiply-accumulates at 224, ours counted on the "
              f"built network, the paper's from its {table} (see docs/roadmap.md). Paper top-1 is ImageNet-1K with "
              "the modernized recipe. Each step builds on the last adopted one.")
        return 0
    if args.data is None or args.output is None:
        raise UserError("give --list, or both --data (a folder, 'digits' or 'cifar10') and --output DIR")
    for flag in ("epochs", "seeds", "batch_size", "img_size", "train_subset"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    overrides = _parse_sets(args.set)
    for flag in ("epochs", "batch_size", "img_size", "train_subset"):
        if getattr(args, flag) is not None:
            overrides[flag] = getattr(args, flag)
    try:
        from .. import train  # noqa: F401  (every run is a convnext.train run)
    except ImportError as e:
        raise UserError(f"the roadmap experiment needs convnext.train, which is not available here ({e})") from None
    from ..train import NonFiniteLossError
    from .experiment import estimate_seconds, resolve_recipe, run_experiment

    try:
        resolve_recipe(args.data, args.recipe, overrides)  # fail on a bad recipe/option before any training
        if not args.no_estimate:
            seconds, how = estimate_seconds(args.data, regime=args.regime, steps=steps, seeds=args.seeds,
                                            recipe=args.recipe, train_overrides=overrides, width_div=args.width_div)
            print(f"estimate (rough): {seconds / 3600:.2f} h of training on this machine ({how}); "
                  "finished runs in --output are reused", file=sys.stderr)
        rows = run_experiment(args.data, args.output, regime=args.regime, steps=steps, seeds=args.seeds,
                              recipe=args.recipe, train_overrides=overrides, width_div=args.width_div,
                              keep_checkpoints=args.keep_checkpoints)
    except KeyboardInterrupt:  # the run being trained saved its checkpoint; finished runs have metrics.json
        print("interrupted: rerun the same `convnext roadmap ...` command to continue where it stopped "
              "(finished runs are reused, the interrupted one resumes from its checkpoint)", file=sys.stderr)
        return 130
    except NonFiniteLossError as e:  # finished runs are kept: rerun the same command to resume after a fix
        print(f"convnext roadmap: stopped: {e}", file=sys.stderr)
        return 1
    except (ValueError, TypeError) as e:  # bad recipe, option or dataset (the trainer's DataError is a ValueError)
        raise UserError(str(e)) from None
    best = max(rows, key=lambda r: r.top1_mean)
    print(f"wrote {args.output}/results.csv, results.md and roadmap.png; best step: {best.step} "
          f"({best.top1_mean:.2f}% top-1)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "roadmap", help="the ResNet -> ConvNeXt modernization roadmap: list its steps or rerun it on a dataset",
        description="List the roadmap ladder (--list), or train every step with one recipe and write "
                    "results.csv, results.md and a Figure-2-style roadmap.png into --output.",
    )
    p.add_argument("--list", action="store_true", help="print the ladder: step, change, params, GFLOPs, paper top-1")
    p.add_argument("--regime", default="r50", help="r50: ResNet-50 -> ConvNeXt-T; r200: -> ConvNeXt-B")
    p.add_argument("--steps", default=None, help="comma-separated step names (see --list), e.g. baseline,patchify")
    p.add_argument("--data", default=None, help="dataset: an image folder, 'digits' or 'cifar10'")
    p.add_argument("--output", default=None, help="experiment folder (reused runs are skipped: resumable)")
    p.add_argument("--recipe", default=None,
                   help="training recipe (shipped name or YAML) shared by all runs; default: the one named like "
                        "--data, if any (e.g. digits)")
    p.add_argument("--seeds", type=int, default=1, help="seeds per step, 0..K-1 (the paper: 3 for R50)")
    p.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    p.add_argument("--batch-size", type=int, default=None, help="override the recipe's batch size")
    p.add_argument("--img-size", type=int, default=None,
                   help="override the recipe's resolution; <= 64 selects the small-input (stride-1) stems")
    p.add_argument("--train-subset", type=int, default=None, help="train on N images of the training set only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="further TrainConfig field for every run (the fixed recipe), e.g. --set lr=1e-3")
    p.add_argument("--width-div", type=int, default=1,
                   help="train every step at its widths divided by N (same factor for all steps; 1 = the registered "
                        "networks): a cheaper ladder for CPU-scale reruns")
    p.add_argument("--no-estimate", action="store_true",
                   help="skip the run-time estimate printed before training (it times one training step)")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep each finished run's checkpoints (default: delete them once its metrics.json is written)")
    p.set_defaults(func=_cmd_roadmap)
