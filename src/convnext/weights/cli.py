"""`convnext convert`, `convnext export` and `convnext predict`: weight files in, weight files / exported
graphs / predictions out. Each subcommand is a plain function of its parsed arguments.

One weights rule for all of them (and `convnext eval`): `--weights auto` takes the weights whose
accuracy the checkpoint reports (`convnext.weights.io.reported_weights`: EMA for a run trained
with EMA), `--weights ema|model` chooses; each command prints which it used.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from ..errors import UserError

__all__ = ["register", "load_model_for_inference", "add_weights_flag", "weights_choice"]

_WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def add_weights_flag(p: argparse.ArgumentParser, ema_alias: bool = True) -> None:
    """`--weights {auto,ema,model}` (and the deprecated `--ema`), shared by convert/export/predict/eval."""
    p.add_argument("--weights", choices=("auto", "ema", "model"), default="auto",
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


def load_model_for_inference(checkpoint: str | Path, model_name: str | None = None, ema: bool = False):
    """`from_checkpoint` in eval mode, with an unknown `--model` reported as a user error."""
    from .loading import from_checkpoint

    try:
        return from_checkpoint(checkpoint, weights="ema" if ema else "auto", model_name=model_name).eval()
    except KeyError as e:  # unknown registered name, with suggestions
        raise UserError(f"--model: {e.args[0]}") from None


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


# ------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from ..api import load
    from .io import check_output_path

    out = check_output_path(args.out, "OUT", force=args.force)
    from ..dense.infer import read_dense_checkpoint

    dense = read_dense_checkpoint(args.checkpoint)
    if dense is not None:
        model, size, what = _dense_for_export(args, dense)
        print(what, file=sys.stderr)
        in_chans = 3
    else:
        loaded = load(args.checkpoint, weights=weights_choice(args), model_name=args.model, img_size=args.img_size)
        model, size, in_chans = loaded.model, loaded.img_size, model_in_chans(loaded.model)
        print(f"{loaded.report}; {size}px (from {loaded.resolution_source})", file=sys.stderr)
    x = torch.randn(2, in_chans, size, size)
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
    weights = dense["reported_weights"] if dense is not None and args.weights == "auto" else (
        args.weights if dense is not None else loaded.weights)
    print(f"wrote {out}: {args.format}, input (B, {in_chans}, {size}, {size}), {weights} weights, "
          f"max |logits - PyTorch| = {diff:.2e} on a random batch of 2")
    if diff > 1e-4:
        raise UserError(f"{out}: exported graph disagrees with PyTorch (max |diff| {diff:.2e} > 1e-4)")
    return 0


def model_in_chans(model) -> int:
    return getattr(model, "in_chans", 3)


def _dense_for_export(args: argparse.Namespace, ckpt: dict):
    """(model, input size, message) for a segmentation checkpoint; detectors cannot be exported (see docs/dense.md)."""
    from ..dense.infer import load_dense

    dense = load_dense(args.checkpoint, weights=weights_choice(args), ckpt=ckpt)
    if dense.task == "detection":
        raise UserError(
            f"{args.checkpoint}: detectors cannot be exported yet: torch.jit.script fails on torchvision's "
            "RoI heads with our modules and torch.export on the data-dependent box count of batched_nms; "
            "export a segmentation model, or run the detector in PyTorch (docs/dense.md)")
    # The pyramid pooling (scales 1, 2, 3, 6 of the stride-32 map) exports with fixed pooling windows
    # only when that map is a multiple of 6 wide: the input a multiple of 192.
    size = args.img_size or -(-dense.img_size // 192) * 192
    if size % 192:
        raise UserError(f"--img-size {size}: UperNet exports at multiples of 192 (its pyramid pooling needs the "
                        "stride-32 map divisible by 6)")
    return dense.model, size, f"{dense.task} model from {args.checkpoint} ({dense.weights} weights), {size}px"


def _run_onnx(path: Path, x):
    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


# ------------------------------------------------------------------------------------ predict
def _cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0; 1 when some images could not be read (each reported on stderr, the rest classified)."""
    from ..api import expand_image_args, iter_predictions, load, open_image
    from ..devices import set_threads
    from .io import printable

    for flag, value in (("--topk", args.topk), ("--batch-size", args.batch_size)):
        if value < 1:
            raise UserError(f"{flag} {value}: must be >= 1")
    set_threads(args.threads)
    paths = expand_image_args(args.images)
    if args.checkpoint is not None:
        from ..dense.infer import read_dense_checkpoint

        dense = read_dense_checkpoint(args.checkpoint)
        if dense is not None:
            return _predict_dense(args, dense, paths)
    if args.output or args.json:
        raise UserError("--output and --json apply to detection/segmentation checkpoints")
    if not any(Path(p).is_file() for p in paths):  # nothing to classify: fail before loading the model
        open_image(paths[0])
    loaded = load(args.checkpoint, weights=weights_choice(args), model_name=args.model, device=args.device,
                  img_size=args.img_size, pretrained=args.pretrained_tag or args.pretrained or None)
    print(printable(loaded.report), file=sys.stderr)
    if args.img_size is None:
        print(f"resolution {loaded.img_size}px (from {loaded.resolution_source}; --img-size overrides)",
              file=sys.stderr)
    failed = 0
    for path, top, error in iter_predictions(loaded, paths, topk=args.topk, batch_size=args.batch_size):
        if error is not None:
            print(f"convnext predict: {printable(error)}", file=sys.stderr)
            failed += 1
            continue
        print(printable(path))
        for name, p, i in top:
            print(f"  {p:7.2%}  {printable(name)} ({i})")
    if failed:
        print(f"convnext predict: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _predict_dense(args: argparse.Namespace, ckpt: dict, paths: list[str]) -> int:
    """Detect / segment each image; draw it into --output and write --json (a folder for several images)."""
    from ..dense.infer import load_dense, predict_dense
    from ..devices import resolve_device
    from ..errors import DataError
    from .io import check_output_path, printable

    def target(flag: str, value: str | None, path: str, suffix: str) -> Path | None:
        if value is None:
            return None
        if len(paths) == 1 and not Path(value).is_dir():
            check_output_path(value, flag, force=True)  # one line naming the flag for a bad place
            Path(value).parent.mkdir(parents=True, exist_ok=True)
            return Path(value)
        Path(value).mkdir(parents=True, exist_ok=True)  # several images: one file each in the folder
        return Path(value) / (Path(path).stem + suffix)

    dense = load_dense(args.checkpoint, weights=weights_choice(args), device=resolve_device(args.device), ckpt=ckpt)
    print(f"{dense.task} model from {printable(args.checkpoint)} ({dense.weights} weights)", file=sys.stderr)
    failed = 0
    for path in paths:
        try:
            res = predict_dense(dense, path, target("--output", args.output, path, ".png"),
                                target("--json", args.json, path, ".json"), img_size=args.img_size,
                                score_thresh=args.score_thresh)
        except DataError as e:
            print(f"convnext predict: {printable(str(e))}", file=sys.stderr)
            failed += 1
            continue
        print(printable(path))
        if dense.task == "detection":
            for d in res["detections"][: args.topk if args.topk else None]:
                print(f"  {d['score']:6.3f}  {printable(d['label'])}  box {d['box']}")
            print(f"  ({len(res['detections'])} detection(s) with score >= {args.score_thresh})")
        else:
            for name, frac in sorted(res["classes"].items(), key=lambda kv: -kv[1])[: args.topk]:
                print(f"  {frac:7.2%}  {printable(name)}")
    return 1 if failed else 0


class _IntermixedParser(argparse.ArgumentParser):
    """Positionals may sit on both sides of options (`export MODEL --checkpoint X OUT`): with an
    optional first positional, plain argparse would take MODEL as OUT and reject the real OUT."""

    _inside = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inside:  # parse_known_intermixed_args calls back into parse_known_args
            return super().parse_known_args(args, namespace)
        self._inside = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inside = False


def register(sub: argparse._SubParsersAction) -> None:
    from .convert import LAYOUTS

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

    p = sub.add_parser("export", help="export a model with its weights to ONNX or TorchScript (parity-checked)")
    p.__class__ = _IntermixedParser
    p.add_argument("model", nargs="?", default=None,
                   help="registered model name (optional: default the architecture the checkpoint describes)")
    p.add_argument("out", help="output file (.onnx / .pt)")
    p.add_argument("--checkpoint", required=True, help="weights in any supported layout")
    p.add_argument("--format", choices=("onnx", "torchscript"), required=True)
    p.add_argument("--img-size", type=int, default=None,
                   help="input resolution of the exported graph (default: the checkpoint's training resolution, "
                        "the pretrained registry's for an official file name, else 224)")
    add_weights_flag(p)
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("predict", help="top-k classes of images with a checkpoint",
                       description="Classify images with the paper's evaluation preprocessing (bicubic resize of "
                                   "the shorter side to size/0.875 and centre crop; square resize at >= 384). "
                                   "Images are read --batch-size at a time. Exit status 1 when some images could "
                                   "not be read (each is reported; the others are classified), 2 on errors.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--checkpoint", default=None, help="weights in any supported layout")
    p.add_argument("--pretrained", action="store_true",
                   help="the official weights of --model (pretrained registry) instead of --checkpoint")
    p.add_argument("--pretrained-tag", default=None, metavar="TAG",
                   help="with --pretrained: which official file, e.g. in22k_ft_in1k_384 (default: ImageNet-1K)")
    p.add_argument("--model", help="registered model name (default: rebuilt from the checkpoint)")
    p.add_argument("--img-size", type=int, default=None,
                   help="evaluation resolution (default: the checkpoint's training resolution, the pretrained "
                        "registry's for an official file name, else 224)")
    p.add_argument("--topk", type=int, default=5, help="classes (or detections / segment classes) printed per image")
    p.add_argument("--output", default=None, metavar="PNG",
                   help="detection/segmentation: draw the result (boxes, masks, names, scores / a colour-coded "
                        "class map) into this PNG (a folder for several images)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="detection/segmentation: write the results as JSON (a folder for several images)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection: lowest score drawn and listed")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded and run at once (default 32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    add_weights_flag(p)
    p.set_defaults(func=_cmd_predict)
