"""`convnext convert`: weight files in, weight files out (`export` / `predict` / `eval` live in
`convnext.inference.cli`). Each subcommand is a plain function of its parsed arguments.

One weights rule for all of them (and `convnext eval`): `--weights auto` takes the weights whose
accuracy the checkpoint reports (`convnext.weights.io.reported_weights`: EMA for a run trained
with EMA), `--weights ema|model` chooses; each command prints which it used.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .._cli_common import add_weights_flag, weights_choice  # noqa: F401  (shared with eval/predict/export)
from ..errors import UserError

__all__ = ["register", "load_model_for_inference", "add_weights_flag", "weights_choice"]

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def load_model_for_inference(checkpoint: str | Path, model_name: str | None = None, ema: bool = False):
    """`from_checkpoint` in eval mode, with an unknown `--model` reported as a user error."""
    from .loading import from_checkpoint

    return from_checkpoint(checkpoint, weights="ema" if ema else "auto", model_name=model_name).eval()


# ------------------------------------------------------------------------------------ convert
def _peer_shapes(layout: str, name: str | None, num_classes: int) -> dict | None:
    """{key: shape} of the peer library's own model for `name` (built on the meta device), or None
    when we cannot build one cheaply (HF: importing transformers costs seconds; unknown names)."""
    import torch

    if name is None:
        return None
    with torch.device("meta"):
        if layout == "timm":
            import timm

            if not timm.is_model(name):
                return None
            peer = timm.create_model(name, pretrained=False, num_classes=num_classes)
        elif layout == "torchvision":
            import torchvision

            size = name.removeprefix("convnext_")
            if size not in ("tiny", "small", "base", "large"):
                return None
            peer = getattr(torchvision.models, name)(num_classes=max(num_classes, 1))
        else:
            return None
    return {k: tuple(v.shape) for k, v in peer.state_dict().items()}


def _verify_written(out: dict, official: dict, layout: str, name: str | None, source: str) -> str:
    """Check what convert is about to write; returns how it was verified, raises CheckpointError otherwise.

    Converted back to the official layout it must give the same keys and shapes; for timm and
    torchvision it must also match the peer library's own model of that name key for key.
    """
    from .convert import convert_state_dict
    from .io import CheckpointError

    back = convert_state_dict(out, src=layout, dst="official") if layout not in ("official", "v2") else out
    bad = sorted(k for k in set(back) | set(official)
                 if k not in back or k not in official or back[k].shape != official[k].shape)
    if bad:
        raise CheckpointError(f"{source}: the {layout} tensors do not convert back to the input "
                              f"({len(bad)} differ, e.g. {bad[0]}); nothing written")
    num_classes = official["head.weight"].shape[0] if "head.weight" in official else 0
    peer = _peer_shapes(layout, name, num_classes)
    if peer is None:
        return "round trip"
    mine = {k: tuple(v.shape) for k, v in out.items()}
    diff = sorted(k for k in set(peer) | set(mine) if peer.get(k) != mine.get(k))
    if diff:
        k = diff[0]
        raise CheckpointError(f"{source}: the converted tensors do not load into {layout}'s {name} "
                              f"({len(diff)} differ, e.g. {k}: written {mine.get(k, 'absent')} vs "
                              f"{layout} {peer.get(k, 'absent')}); nothing written")
    return f"loads into {layout}'s {name}"


def _cmd_convert(args: argparse.Namespace) -> int:
    import json

    import torch

    from ..models.registry import build_model, config_to_dict
    from .convert import convert_state_dict, hf_config
    from .io import CheckpointError, check_output_path, read_checkpoint, save_state_dict, select_weights
    from .loading import _headless, check_fit, checkpoint_config, to_official
    from .pretrained import eval_resolution

    src, dst = Path(args.src), Path(args.dst)
    hf_dir = args.to == "hf" and dst.suffix not in _WEIGHT_SUFFIXES
    check_output_path(dst, "DST", force=args.force, directory=hf_dir)
    ckpt = read_checkpoint(src)
    if _convert_dense(args, ckpt, src, dst):
        return 0
    sd, which = select_weights(ckpt, weights_choice(args), source=str(src))
    layout, official = to_official(sd, str(src))

    try:
        config, name = checkpoint_config(ckpt, official, args.model, source=str(src))
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    # The weights must fit the architecture recorded with them (a model_config that disagrees with
    # the tensors would make every reader fail later): check on the meta device, nothing allocated.
    try:
        with torch.device("meta"):
            skeleton = build_model(config)
    except (RuntimeError, ValueError, TypeError) as e:
        raise CheckpointError(f"{src}: model_config does not describe a model that can be built ({e})") from None
    own = skeleton.state_dict()
    check_fit(own, official, source=str(src), layout=layout, model_kind=name or type(skeleton).__name__,
              reinit_head=_headless(official, own))
    conv_mlp = args.conv_mlp
    if args.to == "timm" and conv_mlp is None and name is not None:
        conv_mlp = name.split("_")[-1] in ("atto", "femto", "pico", "nano")  # timm's conv_mlp=True models
    out = convert_state_dict(official, src="official", dst=args.to, conv_mlp=conv_mlp)
    how = _verify_written(out, official, args.to, name, str(src))

    if args.to in ("official", "v2"):  # our files are self-describing: what predict/eval/export need
        metadata = {"model_config": config_to_dict(config), "source_weights": which}
        if name is not None:
            metadata["model_name"] = name
        for key in ("labels", "train_config"):
            if isinstance(ckpt.get(key), (list, dict)):
                metadata[key] = ckpt[key]
        img_size, crop_pct, origin = eval_resolution(src, ckpt.get("train_config"), ckpt.get("resolution"))
        if origin != "the default":
            metadata["resolution"] = {"img_size": img_size, "crop_pct": crop_pct}
    else:  # foreign layouts get what their own loaders expect: a bare state dict
        metadata = {"format": "pt"} if args.to == "hf" and dst.suffix == ".safetensors" else {}
    if hf_dir:
        # A directory `from_pretrained` can open: model.safetensors + config.json.
        from ..data.imagenet_labels import labels_for

        labels = ckpt.get("labels") if isinstance(ckpt.get("labels"), list) else labels_for(config.num_classes)
        hf_json = hf_config(config, labels)
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "config.json").write_text(json.dumps(hf_json, indent=2))
        dst = dst / "model.safetensors"
        metadata = {"format": "pt"}
    save_state_dict(out, dst, metadata=metadata)
    classes = official["head.weight"].shape[0] if "head.weight" in official else 0
    print(f"{src}: {layout} layout, {len(sd)} tensors, {name or 'unregistered architecture'} ({classes} classes), "
          f"{which} weights")
    print(f"wrote {dst}: {args.to} layout, {len(out)} tensors (verified: {how})"
          + (" (verified against --model)" if args.model else ""))
    return 0


def _convert_dense(args: argparse.Namespace, ckpt: dict, src: Path, dst: Path) -> bool:
    """Detection / segmentation checkpoints (mmdet, mmseg, ours): convert and write; False for any other file."""
    from .dense_files import convert_dense, dense_kind, save_openmmlab
    from .io import save_state_dict, unwrap_state_dict

    try:
        sd = unwrap_state_dict(ckpt, source=str(src))
    except UserError:
        sd = {}
    if dense_kind(sd) is None:
        if args.to in ("mmdet", "mmseg"):
            convert_dense(ckpt, str(src), args.to, args.layout, args.model)  # raises: names what is missing
        if args.layout is not None:
            raise UserError("--layout applies to --to mmdet / mmseg only")
        return False
    dense, out, extra = convert_dense(ckpt, str(src), args.to, args.layout, args.model)
    print(f"{src}: {dense.describe()}")
    if args.to == "official":
        save_state_dict(out, dst, metadata={k: v for k, v in extra.items() if v})
    elif dst.suffix == ".safetensors":
        save_state_dict(out, dst)
    else:
        save_openmmlab(out, dst, extra["meta"])
    naming = "" if args.to == "official" else f", {args.layout or 'openmmlab'} naming"
    print(f"wrote {dst}: {args.to} layout{naming}, {len(out)} tensors (verified: converts back bit-exactly)")
    return True


def register(sub: argparse._SubParsersAction) -> None:
    from .layouts import LAYOUTS  # not .convert: building the parser imports no torch

    p = sub.add_parser("convert", help="convert a checkpoint between official/timm/torchvision/HF/mmdet/mmseg layouts",
                       description="Read a ConvNeXt checkpoint in any supported layout (detected from its keys) and "
                                   "write it in another; the format (.pt or .safetensors) follows DST's extension. "
                                   "Detection / segmentation checkpoints (mmdet, mmseg in FAIR or OpenMMLab naming, "
                                   "ours) convert to mmdet / mmseg (--layout) or official (our layout). "
                                   "What is written is verified (it converts back to the input, and for timm / "
                                   "torchvision matches their model of that name) before it is saved.")
    p.add_argument("src", help="checkpoint file (.pth/.pt/.bin/.safetensors) or HF model directory")
    p.add_argument("dst", help="output file (.safetensors, or .pt/.pth/.bin as a PyTorch file); with --to hf "
                                "a path without such an extension becomes a from_pretrained directory")
    p.add_argument("--to", choices=LAYOUTS + ("mmdet", "mmseg"), default="official",
                   help="target layout (default: official); mmdet / mmseg for detection / segmentation checkpoints")
    p.add_argument("--layout", choices=("openmmlab", "fair"), default=None,
                   help="--to mmdet / mmseg: backbone names of OpenMMLab (mmpretrain: what mmdet 3.x / mmseg 1.x "
                        "load; the default) or of FAIR's object_detection / semantic_segmentation code")
    p.add_argument("--model", help="registered model name: verify the weights load strictly into it")
    add_weights_flag(p)
    p.add_argument("--force", action="store_true", help="overwrite DST if it exists")
    p.add_argument("--conv-mlp", dest="conv_mlp", action=argparse.BooleanOptionalAction, default=None,
                   help="--to timm: store the MLP as 1x1 convs (timm's atto/femto/pico/nano); default inferred")
    p.set_defaults(func=_cmd_convert)
