"""`convnext eval`, `convnext predict` and `convnext export`: plain functions over `convnext.inference`.

Building these parsers imports neither torch nor any other convnext module but `convnext.outputs`-free
argparse code: `convnext predict --help` answers at once. Every command starts from one `load`
(the file read once, its task known); each refuses to overwrite a file it did not create unless
`--force`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .._cli_common import add_weights_flag, weights_choice
from ..errors import ConfigError, UserError

__all__ = ["register"]


def _positive(flag: str, value: int | None, zero_ok: bool = False) -> None:
    if flag == "--img-size" and value is not None and value < 1:
        raise ConfigError(f"--img-size {value}: must be a positive multiple of 32 (a classifier's input side; "
                          "detection / segmentation: a positive number of pixels)")
    if value is not None and (value < 0 or (value == 0 and not zero_ok)):
        raise ConfigError(f"{flag} {value}: must be {'>= 0' if zero_ok else '>= 1'}")


def _load(args: argparse.Namespace, announce: bool = True, **kw):
    """`load` from the common flags; the one-line report of what was loaded on stderr (`eval` of a
    classifier prints it in its result line instead)."""
    from ..outputs import printable
    from .loaded import load

    loaded = load(args.checkpoint, weights=weights_choice(args), model_name=args.model, img_size=args.img_size, **kw)
    if announce or loaded.task != "classification":
            print(printable(f"{loaded.report}" + (f"; {loaded.img_size}px (from {loaded.resolution_source})"
                                              if loaded.task == "classification" else f", {loaded.img_size}px")),
              file=sys.stderr)
    return loaded


def _fast_cpu(args: argparse.Namespace, loaded, batch_size: int, compile: bool = False) -> None:
    """--dtype: a classifier on CPU runs `convnext.deploy.model_for_dtype` (bf16 end to end on AMX /
    AVX512-BF16 CPUs with auto); the line saying what runs goes to stderr."""
    from ..deploy.cpu import model_for_dtype
    from ..deploy.features import select_dtype
    from ..deploy.int8 import Int8Model
    from ..deploy.runtimes import RuntimeGraph

    if isinstance(loaded.model, (Int8Model, RuntimeGraph)):  # an export: --dtype picks the precision it runs in
        if getattr(args, "amp", "off") != "off":
            raise UserError(f"--amp {args.amp}: {loaded.source} is an export ({loaded.layout}) that runs in the "
                            f"precision --dtype picks (auto: bf16 where the CPU has native bf16); leave --amp off")
        chosen, reason = select_dtype(args.dtype, "cpu")
        if isinstance(loaded.model, Int8Model):  # the precision of its float ops
            loaded.model.set_mixed_bf16(chosen == "bf16")
        else:  # ONNX Runtime: fp32 only (bf16 asked is refused); OpenVINO: its precision hint
            if loaded.model.kind == "onnx" and args.dtype == "auto":
                chosen, reason = "fp32", "fp32 (ONNX Runtime runs the graph in fp32)"
            loaded.model.prepare(chosen)
        print(f"{loaded.model.describe()}; {reason}", file=sys.stderr)
        return
    device = next(loaded.model.parameters()).device
    built = loaded.model
    loaded.model, line = model_for_dtype(loaded.model, args.dtype, device, batch_size, loaded.img_size,
                                         task=loaded.task, amp=getattr(args, "amp", "off"), compile=compile)
    if line and (loaded.model is not built or args.dtype != "auto"):  # said when it changes what runs
        print(line, file=sys.stderr)


# ------------------------------------------------------------------------------------------- eval
# eval times inductor among the CPU paths only for this many images or more: compiling ConvNeXt-T
# takes 10-20 s, and the compiled bf16 path saves ~0.3 s per 100 images over eager on a 2-core AMX CPU.
_COMPILE_MIN_IMAGES = 5000


def _cmd_eval(args: argparse.Namespace) -> int:
    from ..devices import set_threads
    from ..outputs import check_output_path, printable

    _positive("--batch-size", args.batch_size)
    _positive("--num-workers", args.num_workers, zero_ok=True)
    _positive("--img-size", args.img_size)
    set_threads(args.threads)
    if args.json:
        check_output_path(args.json, "--json", force=args.force)
    if args.save_predictions:
        check_output_path(args.save_predictions, "--save-predictions", force=args.force, directory=True)
    if args.benchmark is not None:  # robustness benchmarks (Table 8)
        from .robustness import cmd_benchmark

        return cmd_benchmark(args)
    if args.partial:
        raise UserError("--partial applies to --benchmark runs only")
    from ..data.datasets import BUILTIN_DATASETS, build_dataset
    from .evaluate import evaluate

    loaded = _load(args, announce=False, device=args.device, crop_pct=args.crop_pct)
    dataset = None  # the val split of an image folder, built once: its size decides the CPU path
    if loaded.task == "classification" and args.data not in BUILTIN_DATASETS:
        # A missing split is said before the CPU path is built (compiling takes tens of seconds).
        dataset = build_dataset(args.data, "val", loaded.transform, classes=None, strict=args.strict_images,
                                data_dir=args.data_dir)
    images = None if dataset is None else len(dataset)
    _fast_cpu(args, loaded, args.batch_size or 100, compile=images is None or images >= _COMPILE_MIN_IMAGES)
    if args.multi_scale and loaded.task != "segmentation":
        raise UserError("--multi-scale applies to segmentation checkpoints only")
    res = evaluate(loaded, args.data, batch_size=args.batch_size, num_workers=args.num_workers, amp=args.amp,
                   data_dir=args.data_dir, strict_images=args.strict_images, progress=args.progress,
                   multiscale=args.multi_scale, save_predictions=args.save_predictions, dataset=dataset)
    _print_eval(loaded, args, res)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    if res.get("predictions"):
        print(printable(f"predictions written to {res['predictions']}"), file=sys.stderr)
    return 0


def _print_eval(loaded, args: argparse.Namespace, res: dict) -> None:
    from ..outputs import chance_note, printable

    if loaded.task == "classification":
        if res.get("skipped_images"):  # as training reports them; --strict-images fails on the first instead
            print(f"convnext eval: warning: {res['skipped_images']} unreadable image(s) skipped "
                  f"(--strict-images fails on the first, naming it)", file=sys.stderr)
        top5 = f"  top-5 {res['top5']:.2f}%" if res.get("top5") is not None else ""  # hidden for <= 5 classes
        print(printable(f"{loaded.source} ({loaded.weights} weights) on {args.data} at {loaded.img_size}px, "
                        f"{res['images']} images: top-1 {res['top1']:.2f}%{top5}  loss {res['loss']:.4f}"))
        note = chance_note(res["top1"], len(res.get("per_class", {}).get("accuracy", {})), res["images"],
                           loaded.img_size)
        if note:
            print(f"convnext eval: {note}", file=sys.stderr)
        return
    head = f"{loaded.source} ({loaded.weights} weights, {loaded.task}) on {args.data}, {res['images']} images"
    if loaded.task == "detection":
        print(printable(head))
        print("        AP     AP50   AP75   APs    APm    APl")
        for kind in ("bbox", "segm"):
            if f"{kind}_AP" in res:
                vals = [res.get(f"{kind}_{k}") for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")]
                # COCO's -1: no ground truth of that size in the data, not a result
                print(f"{kind:<5}" + "".join("      -" if v is None or v != v or v < 0 else f" {v:6.2f}" for v in vals))
    else:
        print(printable(f"{head}: mIoU {res['mIoU']:.2f}  aAcc {res['aAcc']:.2f}  "
                        f"mAcc {res.get('mAcc', float('nan')):.2f}"))


# ---------------------------------------------------------------------------------------- predict
def _cmd_predict(args: argparse.Namespace) -> int:
    """Exit status 0; 1 when some images could not be read (each reported on stderr, the rest done)."""
    from ..devices import set_threads
    from .images import expand_image_args, open_image

    for flag, value in (("--img-size", args.img_size), ("--topk", args.topk), ("--batch-size", args.batch_size)):
        _positive(flag, value)
    set_threads(args.threads)
    paths = expand_image_args(args.images)
    outputs = _predict_outputs(args, paths)  # every output place checked before any work
    if not any(Path(p).is_file() for p in paths):  # nothing to predict: fail before loading the model
        open_image(paths[0])
    loaded = _load(args, device=args.device, pretrained=args.pretrained_tag or args.pretrained or None)
    _fast_cpu(args, loaded, min(args.batch_size, len(paths)))
    if loaded.task == "classification":
        if args.output or args.label_map:
            raise UserError("--output and --label-map apply to detection/segmentation checkpoints")
        return _predict_classes(args, loaded, paths, outputs.get("--json"))
    if args.label_map and loaded.task != "segmentation":
        raise UserError("--label-map applies to segmentation checkpoints")
    return _predict_dense(args, loaded, paths, outputs)


def _predict_outputs(args: argparse.Namespace, paths: list[str]) -> dict[str, list[Path] | None]:
    """flag -> one output path per image (None when not asked): a file for one image, a folder of
    distinct names (relative paths kept) for several; existing files refused without --force."""
    from ..outputs import check_output_file, check_output_path, output_names

    out: dict[str, list[Path] | None] = {}
    for flag, value, suffix in (("--output", args.output, ".png"), ("--json", args.json, ".json"),
                                ("--label-map", args.label_map, ".png")):
        if value is None:
            continue
        if len(paths) == 1 and not Path(value).is_dir():
            out[flag] = [check_output_file(value, flag, (suffix,), force=args.force,
                                           hint=" (a folder for several images)")]
        else:
            folder = Path(value)
            if folder.exists() and not folder.is_dir():
                raise UserError(f"{flag} {folder}: a file; several images need a folder")
            files = [folder / n for n in output_names(paths, suffix)]
            for f in files:
                check_output_path(f, flag, force=args.force)
            out[flag] = files
    return out


def _predict_classes(args: argparse.Namespace, loaded, paths: list[str], json_files) -> int:
    from ..outputs import printable
    from .loaded import EXPORTED_LAYOUTS
    from .predict import iter_predictions

    if args.img_size is None and loaded.layout not in EXPORTED_LAYOUTS:  # an export's resolution is fixed
        print(f"resolution {loaded.img_size}px (from {loaded.resolution_source}; --img-size overrides)",
              file=sys.stderr)
    failed = 0
    records = []
    for path, top, error in iter_predictions(loaded, paths, topk=args.topk, batch_size=args.batch_size):
        if error is not None:
            print(f"convnext predict: {printable(error)}", file=sys.stderr)
            failed += 1
            continue
        print(printable(path))
        for name, p, i in top:
            print(f"  {p:7.2%}  {printable(name)} ({i})")
        records.append({"image": str(path), "topk": [{"class": n, "index": i, "probability": round(p, 6)}
                                                     for n, p, i in top]})
    if json_files:
        _write_json_records(json_files, records, paths)
    if failed:
        print(f"convnext predict: {failed} of {len(paths)} image(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _write_json_records(files: list[Path], records: list[dict], paths: list[str]) -> None:
    by_image = {r["image"]: r for r in records}
    for path, f in zip(paths, files):
        if str(path) in by_image:
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(json.dumps(by_image[str(path)], indent=2) + "\n")


def _predict_dense(args: argparse.Namespace, loaded, paths: list[str], outputs: dict) -> int:
    """Detect / segment each image; draw it into --output, write --json and --label-map."""
    from ..errors import DataError
    from ..outputs import printable
    from .predict import predict_dense

    def place(flag: str, i: int) -> Path | None:
        files = outputs.get(flag)
        if files is None:
            return None
        files[i].parent.mkdir(parents=True, exist_ok=True)
        return files[i]

    failed = 0
    for i, path in enumerate(paths):
        try:
            res = predict_dense(loaded, path, place("--output", i), place("--json", i),
                                label_map=place("--label-map", i), score_thresh=args.score_thresh)
        except DataError as e:
            print(f"convnext predict: {printable(str(e))}", file=sys.stderr)
            failed += 1
            continue
        print(printable(path))
        if loaded.task == "detection":
            for d in res["detections"][: args.topk if args.topk else None]:
                print(f"  {d['score']:6.3f}  {printable(d['label'])}  box {d['box']}")
            print(f"  ({len(res['detections'])} detection(s) with score >= {args.score_thresh})")
        else:
            for name, frac in sorted(res["classes"].items(), key=lambda kv: -kv[1])[: args.topk]:
                print(f"  {frac:7.2%}  {printable(name)}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------- export
def _cmd_export(args: argparse.Namespace) -> int:
    from ..outputs import check_output_path, printable
    from .export import export
    from .loaded import EXPORTED_LAYOUTS, INT8_PROGRAM, ONNX_GRAPH

    out = check_output_path(args.out, "OUT", force=args.force)
    _positive("--img-size", args.img_size)
    if args.int8_convs and args.format != "int8":
        raise UserError(f"--int8-convs applies to --format int8 only (got --format {args.format})")
    loaded = _load(args)
    if loaded.layout in EXPORTED_LAYOUTS:
        what = {INT8_PROGRAM: "an int8 program", ONNX_GRAPH: "an ONNX graph"}.get(loaded.layout, "an OpenVINO IR")
        raise UserError(f"{args.checkpoint}: already {what}; export from the float checkpoint it was exported from")
    if args.format == "int8":
        from ..deploy.int8 import export_int8_cli

        return export_int8_cli(loaded, out, args)
    res = export(loaded, out, args.format, img_size=args.img_size if loaded.task != "classification" else None)
    shape = res["input_shape"]
    if res["max_abs_diff"] is None:
        print(f"wrote {out} (onnxruntime not installed: parity not checked)")
        return 0
    print(printable(f"wrote {out}: {args.format}, input (B, {shape[1]}, {shape[2]}, {shape[3]}), "
                    f"{loaded.task}, {len(loaded.classes or [])} classes in its metadata, {loaded.weights} weights, "
                    f"max |logits - PyTorch| = {res['max_abs_diff']:.2e} on a random batch of 2"))
    return 0


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


def _register_eval(sub) -> None:
    p = sub.add_parser("eval", help="metrics of a checkpoint on a dataset (top-1/top-5, COCO AP, mIoU)",
                       description="Evaluate a classifier (top-1/top-5, per-class accuracy), detector (COCO box/mask "
                                   "AP) or segmenter (mIoU) with its dataset's evaluation preprocessing.")
    p.add_argument("--checkpoint", required=True, help="a `convnext train` checkpoint, an mmdet/mmseg file, "
                                                       "a classifier in any supported layout, or its export "
                                                       "(int8 .pt2, ONNX .onnx, OpenVINO .xml)")
    p.add_argument("--data", required=True,
                   help="folder with val/ (or test/) class folders, or digits | cifar10 | cifar100; a COCO or "
                        "ADE20K-layout folder for detection/segmentation")
    p.add_argument("--img-size", type=int, default=None, help="evaluation resolution (default: the training one)")
    p.add_argument("--crop-pct", type=float, default=None,
                   help="centre-crop fraction (default 0.875 below 384, 1.0 from 384)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per batch (default 100; detection/segmentation: the training run's, since padding "
                        "to the largest image of a batch changes the numbers slightly; 1 with --save-predictions)")
    add_weights_flag(p, ema_alias=False)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="classifier on CPU: auto (default) runs bf16 end to end where the CPU has AMX-BF16 / "
                        "AVX512-BF16 (convnext.deploy.fast_cpu_model) and exact fp32 elsewhere; fp32 keeps exact fp32")
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
    p.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    p.add_argument("--save-predictions", default=None, metavar="DIR",
                   help="write the predictions: COCO results JSON (detection), one label-map PNG per image in the "
                        "annotations' values (segmentation), per-image top-k JSON (classification)")
    p.add_argument("--force", action="store_true", help="overwrite --json / --save-predictions if they exist")
    p.add_argument("--partial", action="store_true",
                   help="with --benchmark: score the corruptions/severities/classes present instead of failing "
                        "on missing ones (the result is marked partial and lists them)")
    p.set_defaults(func=_cmd_eval)


def _register_export(sub) -> None:
    p = sub.add_parser("export", help="export a model with its weights to ONNX, TorchScript, OpenVINO or int8 "
                                      "(parity-checked)")
    p.__class__ = _IntermixedParser
    p.add_argument("model", nargs="?", default=None,
                   help="registered model name (optional: default the architecture the checkpoint describes)")
    p.add_argument("out", help="output file (.onnx / .pt / .xml / .pt2)")
    p.add_argument("--checkpoint", required=True, help="weights in any supported layout")
    # Formats: the keys of convnext.inference.export.EXPORTERS (add a format there and here).
    p.add_argument("--format", choices=("onnx", "torchscript", "openvino", "int8"), required=True,
                   help="onnx, torchscript, openvino (IR .xml + .bin via openvino.convert_model of our ONNX), or "
                        "int8 (static PT2E quantization, a torch.export .pt2 file; needs --calib-data)")
    p.add_argument("--calib-data", default=None, metavar="DIR",
                   help="int8: a folder of your images (an ImageFolder split gives labels and top-1; a dataset "
                        "root with train/ and val/ stands for its val/)")
    p.add_argument("--calib-images", type=int, default=256, help="int8: images calibrated on (default 256)")
    p.add_argument("--eval-images", type=int, default=256,
                   help="int8: further images on which fp32 and int8 are compared (default 256)")
    p.add_argument("--batch-size", type=int, default=16, help="int8: calibration / comparison batch (default 16)")
    p.add_argument("--int8-convs", action="store_true",
                   help="int8: quantize the convolutions too (stem, depthwise, downsampling); default: every Linear "
                        "int8, convolutions float (measured faster and closer to fp32)")
    p.add_argument("--img-size", type=int, default=None,
                   help="input resolution of the exported graph (default: the checkpoint's training resolution, "
                        "the pretrained registry's for an official file name, else 224)")
    add_weights_flag(p)
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=_cmd_export)


def _register_predict(sub) -> None:
    p = sub.add_parser("predict", help="top-k classes, detections or class maps of images with a checkpoint",
                       description="Run a checkpoint on images with exactly the preprocessing `convnext eval` uses "
                                   "(classification: bicubic resize of the shorter side to size/0.875 and centre "
                                   "crop; square resize at >= 384). Exit status 1 when some images could not be "
                                   "read (each is reported; the others are done), 2 on errors.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--checkpoint", default=None,
                   help="weights in any supported layout, or a classifier's export (int8 .pt2, ONNX .onnx, OpenVINO "
                        ".xml)")
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
                        "class map with a legend) into this PNG (a folder for several images)")
    p.add_argument("--json", default=None, metavar="FILE",
                   help="write the results as JSON: top-k (classification), detections, class fractions "
                        "(a folder for several images)")
    p.add_argument("--label-map", default=None, metavar="PNG",
                   help="segmentation: the class map as a PNG in the annotation files' values (a folder for "
                        "several images)")
    p.add_argument("--score-thresh", type=float, default=0.3, help="detection: lowest score drawn and listed")
    p.add_argument("--batch-size", type=int, default=32, help="images decoded and run at once (default 32)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="classifier on CPU: auto (default) runs bf16 end to end where the CPU has AMX-BF16 / "
                        "AVX512-BF16 (convnext.deploy.fast_cpu_model) and exact fp32 elsewhere; fp32 keeps exact fp32")
    p.add_argument("--force", action="store_true", help="overwrite --output / --json / --label-map files")
    add_weights_flag(p)
    p.set_defaults(func=_cmd_predict)


def register(sub: argparse._SubParsersAction, commands: tuple[str, ...] = ("eval", "predict", "export")) -> None:
    for name in commands:
        {"eval": _register_eval, "predict": _register_predict, "export": _register_export}[name](sub)
