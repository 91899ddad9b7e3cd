"""`convnext convert`, `convnext export` and `convnext predict`: weight files in, weight files / exported
graphs / predictions out. Each subcommand is a plain function of its parsed arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from ..models.registry import build_model, config_to_dict
from .convert import LAYOUTS, convert_state_dict, hf_config
from .io import CheckpointError, read_checkpoint, save_state_dict, unwrap_state_dict
from .loading import checkpoint_config, from_checkpoint, load_checkpoint, to_official

__all__ = ["register", "load_model_for_inference"]

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def load_model_for_inference(checkpoint: str | Path, model_name: str | None = None, ema: bool = False) -> nn.Module:
    """`from_checkpoint` in eval mode, with an unknown `--model` reported as a user error."""
    try:
        return from_checkpoint(checkpoint, ema=ema, model_name=model_name).eval()
    except KeyError as e:  # unknown registered name, with suggestions
        raise UserError(f"--model: {e.args[0]}") from None


# ------------------------------------------------------------------------------------ convert
def _cmd_convert(args: argparse.Namespace) -> int:
    src, dst = Path(args.src), Path(args.dst)
    ckpt = read_checkpoint(src)
    sd = unwrap_state_dict(ckpt, ema=args.ema, source=str(src))
    layout, official = to_official(sd, str(src))

    try:
        config, name = checkpoint_config(ckpt, official, args.model, source=str(src))
    except KeyError as e:
        raise UserError(f"--model: {e.args[0]}") from None
    if args.model is not None:  # verify: the weights must load strictly into the named model
        load_checkpoint(build_model(config), official, source=str(src))
    conv_mlp = args.conv_mlp
    if args.to == "timm" and conv_mlp is None and name is not None:
        conv_mlp = name.split("_")[-1] in ("atto", "femto", "pico", "nano")  # timm's conv_mlp=True models
    out = convert_state_dict(official, src="official", dst=args.to, conv_mlp=conv_mlp)

    if args.to in ("official", "v2"):  # our files are self-describing
        metadata = {"model_config": config_to_dict(config)}
        if name is not None:
            metadata["model_name"] = name
        if isinstance(ckpt.get("labels"), list):
            metadata["labels"] = ckpt["labels"]
    else:  # foreign layouts get what their own loaders expect: a bare state dict
        metadata = {"format": "pt"} if args.to == "hf" and dst.suffix == ".safetensors" else {}
    if args.to == "hf" and dst.suffix not in _WEIGHT_SUFFIXES:
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
    print(f"{src}: {layout} layout, {len(sd)} tensors, {name or 'unregistered architecture'} ({classes} classes)"
          f"{' [EMA weights]' if args.ema else ''}")
    print(f"wrote {dst}: {args.to} layout, {len(out)} tensors" + (" (verified against --model)" if args.model else ""))
    return 0


# ------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    model = load_model_for_inference(args.checkpoint, args.model, ema=args.ema)
    stride = getattr(model, "stride", 32)
    if args.img_size % stride:
        raise UserError(f"--img-size {args.img_size}: must be a multiple of {stride} for {args.model}")
    x = torch.randn(2, model.in_chans, args.img_size, args.img_size)
    with torch.no_grad():
        ref = model(x)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The input checks in forward() are Python conditions on shapes: tracing evaluates them once,
        # which is what we want for a fixed-resolution graph; silence the tracer's notes about it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; still works
        if args.format == "onnx":
            torch.onnx.export(
                model, (x,), str(out), input_names=["image"], output_names=["logits"],
                dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False,
            )
            got = _run_onnx(out, x)
        else:
            # check_trace re-traces and diffs graph text, which trips over mangled class names when
            # a model class was already scripted in this process; we check outputs below instead.
            traced = torch.jit.trace(model, x, check_trace=False)
            traced.save(str(out))
            with torch.no_grad():
                got = torch.jit.load(str(out))(x)
    if got is None:
        print(f"wrote {out} (onnxruntime not installed: parity not checked)")
        return 0
    diff = (got - ref).abs().max().item()
    print(f"wrote {out}: {args.format}, input (B, {model.in_chans}, {args.img_size}, {args.img_size}), "
          f"max |logits - PyTorch| = {diff:.2e} on a random batch of 2")
    if diff > 1e-4:
        raise UserError(f"{out}: exported graph disagrees with PyTorch (max |diff| {diff:.2e} > 1e-4)")
    return 0


def _run_onnx(path: Path, x: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


# ------------------------------------------------------------------------------------ predict
def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"image not found: {p}")
    try:
        with Image.open(p) as img:
            img.load()
            return img.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{p}: not a readable image ({e})") from None


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..data.imagenet_labels import labels_for
    from ..data.transforms import eval_transform

    if args.topk < 1:
        raise UserError(f"--topk {args.topk}: must be >= 1")
    images = [_open_image(p) for p in args.images]  # fail on a bad path before loading the model
    model = load_model_for_inference(args.checkpoint, args.model, ema=args.ema)
    if model.num_classes <= 0:
        raise UserError(f"{args.checkpoint}: the model has no classifier head; nothing to predict")
    stride = getattr(model, "stride", 32)
    info = model.checkpoint_info
    crop_pct = None
    if args.img_size is None:
        from .pretrained import eval_resolution

        args.img_size, crop_pct, source = eval_resolution(args.checkpoint, info.get("train_config"))
        print(f"resolution {args.img_size}px (from {source}; --img-size overrides)", file=sys.stderr)
    if args.img_size % stride:
        raise UserError(f"--img-size {args.img_size}: must be a multiple of {stride}")
    labels = info["labels"] or labels_for(model.num_classes)
    if labels is not None and len(labels) != model.num_classes:
        raise CheckpointError(f"{args.checkpoint}: {len(labels)} labels stored for a {model.num_classes}-class head")
    transform = eval_transform(args.img_size, crop_pct=crop_pct)
    batch = torch.stack([transform(img) for img in images])  # (N, 3, S, S)
    with torch.no_grad():
        probs = model(batch).softmax(dim=-1)
    k = min(args.topk, model.num_classes)
    top_p, top_i = probs.topk(k, dim=-1)
    for path, ps, idx in zip(args.images, top_p.tolist(), top_i.tolist()):
        print(path)
        for p, i in zip(ps, idx):
            name = labels[i] if labels is not None else f"class {i}"
            print(f"  {p:7.2%}  {name} ({i})")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between official/timm/torchvision/HF layouts",
                       description="Read a ConvNeXt checkpoint in any supported layout (detected from its keys) and "
                                   "write it in another; the format (.pt or .safetensors) follows DST's extension.")
    p.add_argument("src", help="checkpoint file (.pth/.pt/.bin/.safetensors) or HF model directory")
    p.add_argument("dst", help="output file (.safetensors, or .pt/.pth/.bin as a PyTorch file); with --to hf "
                                "a path without such an extension becomes a from_pretrained directory")
    p.add_argument("--to", choices=LAYOUTS, default="official", help="target layout (default: official)")
    p.add_argument("--model", help="registered model name: verify the weights load strictly into it")
    p.add_argument("--ema", action="store_true", help="take the EMA weights (model_ema) of the checkpoint")
    p.add_argument("--conv-mlp", dest="conv_mlp", action=argparse.BooleanOptionalAction, default=None,
                   help="--to timm: store the MLP as 1x1 convs (timm's atto/femto/pico/nano); default inferred")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser("export", help="export a model with its weights to ONNX or TorchScript (parity-checked)")
    p.add_argument("model", help="registered model name, e.g. convnext_tiny")
    p.add_argument("out", help="output file (.onnx / .pt)")
    p.add_argument("--checkpoint", required=True, help="weights in any supported layout")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--img-size", type=int, default=224, help="input resolution of the exported graph (default 224)")
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="top-k classes of images with a checkpoint",
                       description="Classify images with the paper's evaluation preprocessing (bicubic resize of "
                                   "the shorter side to size/0.875 and centre crop; square resize at >= 384).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="weights in any supported layout")
    p.add_argument("--model", help="registered model name (default: rebuilt from the checkpoint)")
    p.add_argument("--img-size", type=int, default=None,
                   help="evaluation resolution (default: the checkpoint's training resolution, the pretrained "
                        "registry's for an official file name, else 224)")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--ema", action="store_true", help="use the EMA weights of the checkpoint")
    p.set_defaults(func=_cmd_predict)
