"""Deployment runtimes: ONNX Runtime and OpenVINO running our ONNX export of the same weights.

`export_onnx` writes the graph every runtime here reads (opset 17, dynamic batch, input "image",
output "logits"); `export_openvino` converts that ONNX file with OpenVINO's own converter
(`openvino.convert_model`) and writes the IR (`.xml` + `.bin`, fp32 weights) with the class names
and the preprocessing in the model's rt_info, so the IR is self-describing:

- `model_info/labels`, `mean_values`, `scale_values`, `resize_type`, `reverse_input_channels`:
  the keys OpenVINO's model API reads (labels space-separated with spaces inside names as "_"),
  mean/scale in 0..255 pixel units;
- `convnext/*`: exact values as JSON (class names as a list, img_size, crop_pct, interpolation,
  mean/std in 0..1 units), which is what `read_openvino_meta` returns.

`OnnxRuntimeModule` / `OpenVINOModule` wrap a session / compiled model as an `nn.Module` taking
and returning torch tensors, so the benchmark times them exactly like ours. Both use as many
threads as torch does. OpenVINO runs with its default CPU precision unless a hint is given: bf16
on CPUs with AMX / AVX512-BF16, f32 elsewhere.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError

__all__ = ["export_onnx", "export_openvino", "read_openvino_meta", "OnnxRuntimeModule", "OpenVINOModule",
           "preprocessing_meta"]


def export_onnx(model: nn.Module, path: str | Path, example: torch.Tensor) -> None:
    """ONNX opset 17 with a dynamic batch dimension (input "image", output "logits")."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks, deprecation notes
        torch.onnx.export(model.eval(), (example,), str(path), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)


def preprocessing_meta(img_size: int, crop_pct: float | None = None) -> dict:
    """The evaluation preprocessing the exported model expects (the paper's, `data.transforms.eval_transform`)."""
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    crop = crop_pct if crop_pct is not None else (0.875 if img_size < 384 else 1.0)
    return {"img_size": img_size, "crop_pct": crop, "interpolation": "bicubic", "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD), "layout": "NCHW RGB float32, normalised"}


def _openvino():
    try:
        import openvino as ov
    except ImportError:
        raise UserError("--format openvino needs OpenVINO: pip install openvino "
                        "(or pip install 'convnext[openvino]')") from None
    return ov


def export_openvino(model: nn.Module, path: str | Path, example: torch.Tensor, classes: list[str] | None,
                    preprocessing: dict, onnx_path: str | Path | None = None, extra: dict[str, str] | None = None):
    """Write the OpenVINO IR of `model` to `path` (.xml, with its .bin beside it); returns the ov.Model.

    The IR is converted from our ONNX export (`onnx_path` when the caller already has it) so that
    OpenVINO and ONNX Runtime run the very same graph. `extra` (str -> str) goes to rt_info `convnext/*` too.
    """
    ov = _openvino()
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        if onnx_path is None:
            onnx_path = Path(tmp) / "model.onnx"
            export_onnx(model, onnx_path, example)
        ov_model = ov.convert_model(str(onnx_path))
    task = (extra or {}).get("task", "classification")
    info = {"model_type": task.capitalize()}
    if task == "classification":  # mean / std of 0..1 pixels, as OpenVINO's 0..255 mean_values / scale_values
        mean = [round(255 * m, 4) for m in preprocessing["mean"]]
        scale = [round(255 * s, 4) for s in preprocessing["std"]]
        info.update({"mean_values": " ".join(map(str, mean)), "scale_values": " ".join(map(str, scale)),
                     "resize_type": "standard", "reverse_input_channels": "False", "pad_value": "0",
                     "confidence_threshold": "0"})
    if classes:
        info["labels"] = " ".join(c.replace(" ", "_") for c in classes)
    for key, value in info.items():
        ov_model.set_rt_info(value, ["model_info", key])
    for key, value in (extra or {}).items():
        ov_model.set_rt_info(str(value), ["convnext", key])
    ov_model.set_rt_info(json.dumps(classes), ["convnext", "classes"])
    ov_model.set_rt_info(json.dumps(preprocessing), ["convnext", "preprocessing"])
    ov.save_model(ov_model, str(path), compress_to_fp16=False)  # fp32 weights: parity with PyTorch
    return ov_model


def openvino_writer(model: nn.Module, x: torch.Tensor, out: str | Path, metadata: dict[str, str]) -> torch.Tensor:
    """`convnext export --format openvino`: the IR of `model` with `metadata` (str -> str; "classes" and
    "preprocessing" as JSON) in its rt_info; returns the IR's output on `x` under the f32 hint (parity)."""
    classes = json.loads(metadata.get("classes", "null")) or None
    pre = json.loads(metadata["preprocessing"]) if "preprocessing" in metadata else preprocessing_meta(x.shape[-1])
    ov_model = export_openvino(model, out, x, classes, pre, extra=metadata)
    del ov_model
    return OpenVINOModule(out, precision="f32")(x)


def read_openvino_meta(path: str | Path) -> dict:
    """{"classes": [...] | None, "preprocessing": {...}} stored by `export_openvino` in the IR."""
    ov = _openvino()
    model = ov.Core().read_model(str(path))
    return {"classes": json.loads(model.get_rt_info(["convnext", "classes"]).astype(str)),
            "preprocessing": json.loads(model.get_rt_info(["convnext", "preprocessing"]).astype(str))}


class OnnxRuntimeModule(nn.Module):
    """An onnxruntime CPU session as a module: (B, 3, S, S) torch fp32 -> torch fp32 logits."""

    def __init__(self, onnx_path: str | Path, threads: int | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # No spin-waiting between runs: spinning threads would steal the cores from whatever runs next
        # (the benchmark interleaves implementations in one process).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {"image": x})[0])


class OpenVINOModule(nn.Module):
    """An OpenVINO CPU compiled model as a module; `precision` None keeps OpenVINO's default hint."""

    def __init__(self, model_path: str | Path, precision: str | None = None, threads: int | None = None):
        super().__init__()
        ov = _openvino()
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        self.compiled = ov.Core().compile_model(str(model_path), "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what it runs: f32 / bf16
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.version = ov.__version__
        self._request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().numpy()
        out = self._request.infer({0: x}, share_inputs=True)
        return torch.from_numpy(next(iter(out.values())).copy())
