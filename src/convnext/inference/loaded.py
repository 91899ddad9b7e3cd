"""`load`: any checkpoint we read, of any task, as one `Loaded` (torchvision's Weights, timm's pretrained_cfg).

The file is read once. What it holds decides the task:
- a `convnext train` checkpoint of a detector / segmenter (its `task` / `model_config`);
- an OpenMMLab (mmdet / mmseg) file, recognised by `convnext.weights.dense_files.read_dense_file`;
- otherwise a classifier in any layout `convnext.weights` converts (ours, official, timm,
  torchvision, HF);
- or an exported classifier: an int8 program (.pt2), an ONNX graph or an OpenVINO IR (run on the CPU).
`Loaded` carries the model (eval mode), the task, the class names, the eval transform (the
dataset's own, `convnext.data.preprocess`) and which weights were used; `eval`, `predict` and
`export` all start from it.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from ..errors import CheckpointError, ConfigError, UserError

__all__ = ["Loaded", "load", "resolve_resolution", "dense_task_of", "as_loaded", "INT8_PROGRAM", "ONNX_GRAPH",
           "OPENVINO_IR", "EXPORTED_LAYOUTS"]

INT8_PROGRAM = "int8 program (torch.export)"  # `Loaded.layout` of what `convnext export --format int8` writes
ONNX_GRAPH = "ONNX graph (ONNX Runtime)"  # ... of `convnext export --format onnx`
OPENVINO_IR = "OpenVINO IR"  # ... of `convnext export --format openvino`
EXPORTED_LAYOUTS = (INT8_PROGRAM, ONNX_GRAPH, OPENVINO_IR)  # files run by predict / eval, not exported again
_EXPORT_NAMES = {"int8": "an int8 program", "onnx": "an ONNX graph", "openvino": "an OpenVINO IR"}

_DENSE_ARCHS = {"detection": "detection", "upernet": "segmentation"}


@dataclass
class Loaded:
    """A model ready for inference with everything needed to feed it (see `load`)."""

    model: Any  # nn.Module in eval mode
    # The task's evaluation preprocessing (the same function its dataset uses):
    # classification: PIL image -> (3, S, S) normalised tensor; detection: (3, H, W) uint8 -> float
    # [0, 1] at the test scale; segmentation: (3, H, W) float 0..255 -> normalised at the base scale.
    transform: Callable
    classes: list[str] | None  # class names (raw: escape them before printing), None if unknown
    img_size: int  # classification: input side; detection: shorter side; segmentation: crop
    weights: str  # "ema" | "model": which weights of the checkpoint were loaded
    config: Any  # the model's config dataclass
    crop_pct: float | None = None  # classification; None = the paper's rule (0.875 below 384, 1.0 from 384)
    source: str = ""  # the checkpoint path
    resolution_source: str = ""  # where img_size came from ("the checkpoint's training config", ...)
    report: Any = None  # what was loaded; str() is a one-line summary
    task: str = "classification"  # "classification" | "detection" | "segmentation"
    layout: str = ""  # the file's layout ("official", "timm", "ours", "mmdet (openmmlab)", ...)
    train_config: dict = field(default_factory=dict)  # the training run's config (our checkpoints)
    model_name: str | None = None  # registered name, when known
    labels_stored: bool = False  # the class names come from the checkpoint (not a default list)


def dense_task_of(ckpt: Mapping) -> str | None:
    """The dense task of a `convnext train` checkpoint (read with `read_checkpoint`), or None."""
    mc = ckpt.get("model_config")
    arch = mc.get("arch") if isinstance(mc, Mapping) else None
    return ckpt.get("task") if ckpt.get("task") in ("detection", "segmentation") else _DENSE_ARCHS.get(arch)


def resolve_resolution(default_size: int, default_crop: float | None, img_size: int | None,
                       crop_pct: float | None) -> tuple[int, float | None]:
    """(img_size, crop_pct) for classification, the one rule of `eval` and `predict`: the flags when
    given; the checkpoint's crop kept at its own resolution, the paper's rule (None) at another."""
    if img_size is None:
        img_size = default_size
    if crop_pct is None:
        crop_pct = default_crop if img_size == default_size else None
    return img_size, crop_pct


def _check_img_size(img_size: int | None, stride: int = 32) -> None:
    if img_size is not None and (img_size <= 0 or img_size % stride):
        raise ConfigError(f"--img-size {img_size}: must be a positive multiple of {stride}")


def load(
    path: str | os.PathLike | None = None,
    *,
    weights: str = "auto",
    model_name: str | None = None,
    device: Any = "cpu",
    img_size: int | None = None,
    crop_pct: float | None = None,
    pretrained: bool | str | None = None,
) -> Loaded:
    """Load a checkpoint of any supported layout and task for inference.

    Args:
        path: a weight file or HF `from_pretrained` directory (classifiers: ours, official, timm,
            torchvision, HF; detectors / segmenters: ours, mmdet, mmseg), or a registered model
            name (its official weights, as `pretrained=True`).
        weights: "auto" (the weights the checkpoint reports its accuracy for: EMA for our training
            checkpoints trained with EMA), "ema" or "model".
        model_name: build this registered model instead of the one the checkpoint describes
            (needed for files whose architecture cannot be read from the tensors).
        device: "cpu", "cuda", "auto", ... or a torch.device (an exported int8 program, ONNX graph or
            OpenVINO IR: "cpu" or "auto", which means the CPU for them).
        img_size: evaluation resolution (classification side, detection shorter side,
            segmentation crop); default the checkpoint's, else the task's standard.
        crop_pct: classification centre-crop fraction; default the checkpoint's, else the paper's rule.
        pretrained: instead of `path`, the official weights of `model_name` (True, or a tag of
            `convnext.weights.list_pretrained(model_name)`), through torch's hub cache.
    """
    import torch

    from ..devices import resolve_device
    from ..weights.io import is_exported_program, read_checkpoint, runtime_graph_kind

    if img_size is not None and img_size <= 0:
        raise ConfigError(f"--img-size {img_size}: must be a positive number of pixels")
    path, model_name = _resolve_source(path, model_name, pretrained)
    # `convnext export --format int8 | onnx | openvino`: files that run on the CPU only
    exported = "int8" if is_exported_program(path) else runtime_graph_kind(path)
    if exported and not isinstance(device, torch.device) and str(device or "auto").strip().lower() == "auto":
        device = "cpu"  # "auto" means the CPU for them
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    if exported and dev.type != "cpu":
        raise UserError(f"{path}: {_EXPORT_NAMES[exported]} (convnext export --format {exported}) runs on the CPU only; "
                        f"use --device cpu")
    if exported == "int8":
        return _load_int8_program(path, img_size, crop_pct)
    if exported:
        return _load_runtime_graph(path, exported, img_size, crop_pct)
    ckpt = read_checkpoint(path)  # the one read of the file
    task = dense_task_of(ckpt)
    if task is not None:
        loaded = _load_ours_dense(ckpt, path, task, weights, img_size)
    else:
        dense_file = _read_foreign_dense(path, ckpt, model_name)
        loaded = (_load_foreign_dense(dense_file, img_size) if dense_file is not None else
                  _load_classifier(ckpt, path, weights, model_name, dev, img_size, crop_pct))
    loaded.model = loaded.model.to(dev).eval()  # eval mode: BatchNorm uses its running statistics
    return loaded


def _resolve_source(path, model_name: str | None, pretrained) -> tuple[Any, str | None]:
    from ..weights.pretrained import download_pretrained, get_pretrained

    if pretrained:
        if model_name is None:
            raise UserError("--pretrained: name the model too (--model NAME, e.g. convnext_tiny)")
        if path is not None:
            raise UserError("--pretrained and --checkpoint: pass one of them")
        entry = get_pretrained(model_name, None if pretrained is True else str(pretrained))
        return download_pretrained(entry), None  # the file's own name gives the resolution
    if path is None:
        raise UserError("--checkpoint: no checkpoint given (or --pretrained with --model NAME)")
    text = str(path)
    if model_name is None and "://" not in text and not Path(text).exists() and "/" not in text and \
            not Path(text).suffix:
        from ..models import list_models

        if text in list_models(arch="convnext") + list_models(arch="isotropic"):  # a name: its official weights
            return download_pretrained(get_pretrained(text)), None
    return path, model_name


def _load_classifier(ckpt, path, weights, model_name, dev, img_size, crop_pct) -> Loaded:
    from ..data.imagenet_labels import labels_for
    from ..data.transforms import eval_transform
    from ..weights.loading import from_checkpoint
    from ..weights.pretrained import eval_resolution

    model = from_checkpoint(path, weights=weights, model_name=model_name, device=dev, checkpoint=ckpt)
    info = model.checkpoint_info
    default_size, default_crop, res_source = eval_resolution(path, info.get("train_config"), info.get("resolution"))
    size, crop = resolve_resolution(default_size, default_crop, img_size, crop_pct)
    if img_size is not None:
        res_source = "--img-size"
    _check_img_size(size, getattr(model, "stride", 32))
    num_classes = getattr(model, "num_classes", 0)
    classes = info.get("labels") or labels_for(num_classes)
    if classes is not None and len(classes) != num_classes:
        raise CheckpointError(f"{path}: {len(classes)} labels stored for a {num_classes}-class head")
    return Loaded(model=model, transform=eval_transform(size, crop_pct=crop), classes=classes, img_size=size,
                  weights=info["weights"], config=getattr(model, "config", None), crop_pct=crop, source=str(path),
                  resolution_source=res_source, report=info["report"], task="classification",
                  layout=info.get("layout") or "", train_config=dict(info.get("train_config") or {}),
                  model_name=info.get("model_name"), labels_stored=info.get("labels") is not None)


def _check_fixed_size(path, kind: str, size: int, img_size: int | None) -> None:
    """An export's resolution is fixed: another --img-size is refused, naming the file and its size."""
    if img_size is not None and img_size != size:
        raise ConfigError(f"--img-size {img_size}: {path} is {_EXPORT_NAMES[kind]} exported for {size}px inputs (the "
                          f"resolution is fixed at export, the batch size is free); export again with --img-size "
                          f"{img_size} from the float checkpoint")


def _load_int8_program(path, img_size: int | None, crop_pct: float | None) -> Loaded:
    """A classifier's int8 program (`convnext export --format int8`), with the class names and the
    preprocessing stored in it. Its resolution is fixed at export; its batch size is free."""
    from ..data.transforms import eval_transform
    from ..deploy.int8 import load_int8

    model, meta = load_int8(path)
    if (meta.get("task") or "classification") != "classification" or not hasattr(model, "num_classes"):
        raise CheckpointError(f"{path}: a torch.export program, but not a classifier's int8 program from "
                              f"`convnext export --format int8` (expected (B, C, H, W) images in, (B, classes) out)")
    size = model.img_size
    _check_fixed_size(path, "int8", size, img_size)
    stored_crop = float(meta["crop_pct"]) if meta.get("crop_pct") else None
    crop = crop_pct if crop_pct is not None else stored_crop
    classes, stored = _stored_classes(meta.get("classes") or "", model.num_classes, meta.get("labels_stored"))
    origin = meta.get("source") or "unknown"
    note = meta.get("quantization") or "static int8"
    return Loaded(model=model, transform=eval_transform(size, crop_pct=crop), classes=classes, img_size=size,
                  weights=meta.get("weights") or "model", config=None, crop_pct=crop, source=str(path),
                  resolution_source="the int8 program, fixed at export",
                  report=f"int8 program {path} ({note}; exported from {origin}; {model.num_classes} classes)",
                  task="classification", layout=INT8_PROGRAM, labels_stored=stored)


def _stored_classes(text: str, num_classes: int, stored_flag: str | None) -> tuple[list[str], bool]:
    """(class names, whether they are the checkpoint's own) from an export's "classes" metadata (a JSON
    list, or one name per line) and its "labels_stored" flag; ImageNet's / numbered defaults otherwise."""
    import json

    from ..data.imagenet_labels import labels_for

    try:
        classes = [str(c) for c in json.loads(text)] if text.startswith("[") else text.splitlines()
    except ValueError:
        classes = text.splitlines()
    defaults = labels_for(num_classes)
    if len(classes) != num_classes:
        classes = defaults
    # names the float checkpoint carried (eval then maps the data's class folders onto them), not defaults
    stored = stored_flag == "1" if stored_flag else classes != defaults
    return classes, stored


def _load_runtime_graph(path, kind: str, img_size: int | None, crop_pct: float | None) -> Loaded:
    """An exported classifier run by ONNX Runtime (.onnx) or OpenVINO (IR .xml), with the class names
    and the preprocessing its metadata holds (`convnext export` stores them)."""
    import json

    from ..data.transforms import eval_transform
    from ..deploy.runtimes import RuntimeGraph, crop_of_preprocessing

    what = _EXPORT_NAMES[kind]
    graph = RuntimeGraph(path, kind)
    task = graph.meta.get("task") or "classification"
    if task != "classification":
        raise UserError(f"{path}: {what} of a {task} model; convnext predict and eval run exported classifiers "
                        f"only: run the {task} model from the checkpoint it was exported from")
    try:
        pre = json.loads(graph.meta.get("preprocessing") or "{}")
    except ValueError:
        pre = {}
    pre = pre if isinstance(pre, dict) else {}
    size = graph.img_size
    if graph.fixed_size is not None and size is None:
        raise CheckpointError(f"{path}: {what} for {graph.fixed_size[0]}x{graph.fixed_size[1]} inputs; only square "
                              f"inputs are fed by the classification preprocessing")
    if size is not None:
        _check_fixed_size(path, kind, size, img_size)
    source = "the graph, fixed at export"
    if size is None:  # H and W free in the graph: the flag, else the preprocessing it was exported with
        stored = pre.get("center_crop") or pre.get("resize_square") or pre.get("img_size")
        size, source = ((img_size, "--img-size") if img_size else (int(stored), "the graph's metadata") if stored
                        else (224, "the default"))
    stored_crop = crop_of_preprocessing(pre)
    crop = crop_pct if crop_pct is not None else stored_crop
    classes, stored_names = _stored_classes(graph.meta.get("classes") or "", graph.num_classes,
                                            graph.meta.get("labels_stored"))
    origin = graph.meta.get("source") or "unknown"
    layout = ONNX_GRAPH if kind == "onnx" else OPENVINO_IR
    return Loaded(model=graph, transform=eval_transform(size, crop_pct=crop), classes=classes, img_size=size,
                  weights=graph.meta.get("weights") or "model", config=None, crop_pct=crop, source=str(path),
                  resolution_source=source,
                  report=f"{layout} {path} (exported from {origin}; {graph.num_classes} classes)",
                  task="classification", layout=layout, labels_stored=stored_names)


def dense_transform(task: str, img_size: int) -> Callable:
    """The evaluation preprocessing of a dense task (the dataset's, `convnext.data.preprocess`)."""
    from ..data.preprocess import detection_eval_transform, segmentation_base_scale, segmentation_eval_image

    if task == "detection":
        return detection_eval_transform(img_size)
    return functools.partial(segmentation_eval_image, base_scale=segmentation_base_scale(img_size))


def _dense_default_size(task: str, model_name: str | None) -> int:
    if task == "detection":
        return 800
    return 640 if model_name and model_name.split("_")[-1] in ("large", "xlarge") else 512  # 22K models: 640 crops


def _load_ours_dense(ckpt, path, task: str, weights: str, img_size: int | None) -> Loaded:
    from ..models import build_model, config_from_dict
    from ..weights.io import select_weights

    sd, use = select_weights(ckpt, weights, source=str(path))  # the weights rule of every command
    try:
        config = config_from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model_config ({e})") from None
    model = build_model(config)
    try:
        model.load_state_dict(sd)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the model it describes ({str(e).splitlines()[0]})") from None
    train_config = dict(ckpt.get("train_config") or {})
    name = ckpt.get("model_name") if isinstance(ckpt.get("model_name"), str) else train_config.get("model")
    default = int(train_config.get("img_size") or _dense_default_size(task, name))
    size = img_size or default
    return Loaded(model=model, transform=dense_transform(task, size), classes=list(ckpt.get("labels") or []),
                  img_size=size, weights=use, config=config, source=str(path),
                  resolution_source="--img-size" if img_size else "the checkpoint's training config",
                  report=f"{task} model from {path} ({use} weights)", task=task, layout="ours",
                  train_config=train_config, model_name=name, labels_stored=bool(ckpt.get("labels")))


def _read_foreign_dense(path, ckpt: Mapping, model_name: str | None):
    """The `DenseFile` of an mmdet / mmseg checkpoint (`convnext.weights.dense_files`), else None."""
    import dataclasses

    try:
        from ..weights.dense_files import read_dense_file
    except ImportError:  # a build without the OpenMMLab reader
        return None
    df = read_dense_file(ckpt, model_name=model_name)  # the content already read: not read again
    return None if df is None else dataclasses.replace(df, source=str(path))


def _load_foreign_dense(df, img_size: int | None) -> Loaded:
    from ..dense.backbone import load_whole_strict
    from ..models import create_model

    model = create_model(df.model_name, num_classes=df.num_classes, **(getattr(df, "overrides", None) or {}))
    load_whole_strict(model, df.state_dict, df.source)
    classes = list(df.classes) if df.classes else [str(i) for i in range(df.num_classes)]
    size = img_size or _dense_default_size(df.task, df.model_name)
    layout = f"{df.family} ({df.layout} layout)"
    return Loaded(model=model, transform=dense_transform(df.task, size), classes=classes, img_size=size,
                  weights="model", config=model.config, source=str(df.source),
                  resolution_source="--img-size" if img_size else f"the {df.family} standard",
                  report=f"{df.source}: {df.describe() if hasattr(df, 'describe') else layout}",
                  task=df.task, layout=layout, model_name=df.model_name, labels_stored=bool(df.classes))


def as_loaded(target: Any, device: Any = "cpu") -> Loaded:
    """`target` (a Loaded, a path, or a classifier model) as a Loaded."""
    if isinstance(target, Loaded):
        return target
    if isinstance(target, (str, os.PathLike)):
        return load(target, device=device)
    from ..data.imagenet_labels import labels_for
    from ..data.transforms import eval_transform

    info = getattr(target, "checkpoint_info", {}) or {}
    num_classes = getattr(target, "num_classes", 0)
    return Loaded(model=target.eval(), transform=eval_transform(224), classes=info.get("labels") or
                  labels_for(num_classes), img_size=224, weights=info.get("weights", "model"),
                  config=getattr(target, "config", None))
