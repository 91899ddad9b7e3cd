"""`convnext export`: a `Loaded` model as an ONNX or TorchScript graph, parity-checked, self-describing.

The graph carries what is needed to use it: class names, the task, and the preprocessing
(ONNX `metadata_props`; TorchScript `metadata.json` in the archive's extra files). A format is
one entry of `EXPORTERS` (name -> function(model, example input, path) -> output of the written
graph on the example, or None when it cannot be run here); further formats are added there.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Callable

from ..errors import UserError
from .loaded import Loaded

__all__ = ["export", "export_metadata", "EXPORTERS"]


def export_metadata(loaded: Loaded, size: int) -> dict[str, str]:
    """String key -> string value (JSON where structured): what a user of the graph needs to feed it."""
    from ..data.transforms import DEFAULT_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD

    if loaded.task == "classification":
        crop = loaded.crop_pct if loaded.crop_pct is not None else (1.0 if size >= 384 else DEFAULT_CROP_PCT)
        pre = {"input": "RGB, NCHW float, values 0..1 then normalised", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
               "interpolation": "bicubic", "resize_shorter_side": int(size / crop) if crop < 1 else None,
               "center_crop": size if crop < 1 else None, "resize_square": size if crop == 1 else None}
    else:
        pre = {"input": "RGB, NCHW float, values 0..255 normalised", "mean": [m * 255 for m in IMAGENET_MEAN],
               "std": [s * 255 for s in IMAGENET_STD], "interpolation": "bilinear (no antialias)",
               "rescale_to_fit": [4 * loaded.img_size, loaded.img_size], "sliding_window": loaded.img_size,
               "graph_input": size}
    return {"task": loaded.task, "classes": json.dumps(list(loaded.classes or [])), "preprocessing": json.dumps(pre),
            "weights": loaded.weights, "source": str(loaded.source), "producer": "convnext export",
            "labels_stored": "1" if loaded.labels_stored else "0"}  # the checkpoint's own names, or defaults


def _onnx(model, x, out: Path, metadata: dict[str, str]):
    import torch

    torch.onnx.export(model, (x,), str(out), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    try:
        import onnx
    except ImportError:
        pass
    else:
        graph = onnx.load(str(out))
        for k, v in metadata.items():
            graph.metadata_props.add(key=k, value=v)
        onnx.save(graph, str(out))
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])


def _torchscript(model, x, out: Path, metadata: dict[str, str]):
    import torch

    # check_trace re-traces and diffs graph text, which trips over mangled class names when a
    # model class was already scripted in this process; outputs are compared instead.
    traced = torch.jit.trace(model, x, check_trace=False)
    traced.save(str(out), _extra_files={"metadata.json": json.dumps(metadata)})
    with torch.no_grad():
        return torch.jit.load(str(out))(x)


def _openvino(model, x, out: Path, metadata: dict[str, str]):
    from ..deploy.runtimes import openvino_writer  # IR via openvino.convert_model of our ONNX; metadata in rt_info

    return openvino_writer(model, x, out, metadata)


# format -> writer(model, example, path, metadata) -> the written graph's output on the example (or None)
# ("int8" is written by convnext.deploy.int8.export_int8_cli: it needs calibration data)
EXPORTERS: dict[str, Callable[..., Any]] = {"onnx": _onnx, "torchscript": _torchscript, "openvino": _openvino}


def _size(loaded: Loaded, img_size: int | None) -> int:
    if loaded.task == "detection":
        raise UserError(
            f"{loaded.source}: detectors cannot be exported yet: torch.jit.script fails on torchvision's "
            "RoI heads with our modules and torch.export on the data-dependent box count of batched_nms; "
            "export a segmentation model, or run the detector in PyTorch (docs/dense.md)")
    if loaded.task == "segmentation":
        # The pyramid pooling (scales 1, 2, 3, 6 of the stride-32 map) exports with fixed pooling
        # windows only when that map is a multiple of 6 wide: the input a multiple of 192.
        size = img_size or -(-loaded.img_size // 192) * 192
        if size % 192:
            raise UserError(f"--img-size {size}: UperNet exports at multiples of 192 (its pyramid pooling needs "
                            "the stride-32 map divisible by 6)")
        return size
    return loaded.img_size


def export(loaded: Loaded, out: str | Path, fmt: str, *, img_size: int | None = None, tolerance: float = 1e-4) -> dict:
    """Write `loaded.model` to `out` in format `fmt` and compare it with PyTorch on a random batch of 2.

    Returns {"path", "format", "input_shape", "max_abs_diff" (None when the graph cannot be run
    here), "metadata"}; raises UserError when the graph disagrees beyond `tolerance`.
    """
    import torch

    if fmt not in EXPORTERS:
        raise UserError(f"--format {fmt}: expected one of {', '.join(EXPORTERS)}")
    size = _size(loaded, img_size)
    in_chans = getattr(loaded.model, "in_chans", 3)
    model = loaded.model.eval()
    x = torch.randn(2, in_chans, size, size)
    with torch.no_grad():
        ref = model(x)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(loaded, size)
    with warnings.catch_warnings():
        # The input checks in forward() are Python conditions on shapes: tracing evaluates them once,
        # which is what we want for a fixed-resolution graph; silence the tracer's notes about it.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; still works
        got = EXPORTERS[fmt](model, x, out, metadata)
    diff = None if got is None else (got - ref).abs().max().item()
    if diff is not None and diff > tolerance:
        raise UserError(f"{out}: exported graph disagrees with PyTorch (max |diff| {diff:.2e} > {tolerance:g})")
    return {"path": str(out), "format": fmt, "input_shape": (2, in_chans, size, size), "max_abs_diff": diff,
            "metadata": metadata}
