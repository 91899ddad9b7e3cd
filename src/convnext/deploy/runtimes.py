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

`RuntimeGraph` is an exported classifier file (ONNX or OpenVINO IR) as `convnext predict` / `eval`
run it: its input size and class count read off the graph, its metadata (class names,
preprocessing) off the file, the runtime started at the first call.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, UserError

__all__ = ["export_onnx", "export_openvino", "read_openvino_meta", "OnnxRuntimeModule", "OpenVINOModule",
           "preprocessing_meta", "RuntimeGraph", "crop_of_preprocessing"]


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


def _openvino(what: str = "--format openvino"):
    try:
        import openvino as ov
    except ImportError:
        raise UserError(f"{what} needs OpenVINO: pip install openvino "
                        "(or pip install 'convnext[openvino]')") from None
    return ov


def _onnxruntime(what: str):
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError(f"{what} needs ONNX Runtime: pip install onnxruntime "
                        "(or pip install 'convnext[export]')") from None
    return ort


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
        ort = _onnxruntime(f"{onnx_path}: running an ONNX graph")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        # No spin-waiting between runs: spinning threads would steal the cores from whatever runs next
        # (the benchmark interleaves implementations in one process).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.version = ort.__version__
        self.input_name = self.session.get_inputs()[0].name  # "image" in our exports

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: x})[0])


class OpenVINOModule(nn.Module):
    """An OpenVINO CPU compiled model as a module; `precision` None keeps OpenVINO's default hint."""

    def __init__(self, model_path, precision: str | None = None, threads: int | None = None):
        """`model_path`: an IR .xml, or an `openvino.Model` already read."""
        super().__init__()
        ov = _openvino(f"{model_path}: running an OpenVINO IR")
        config = {"INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        source = model_path if isinstance(model_path, ov.Model) else str(model_path)
        self.compiled = ov.Core().compile_model(source, "CPU", config)
        hint = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # what it runs: f32 / bf16
        self.precision = hint.get_type_name() if hasattr(hint, "get_type_name") else str(hint)
        self.version = ov.__version__
        self._request = self.compiled.create_infer_request()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().float().contiguous().numpy()
        out = self._request.infer({0: x}, share_inputs=True)
        return torch.from_numpy(next(iter(out.values())).copy())


def crop_of_preprocessing(pre: dict) -> float | None:
    """The centre-crop fraction an export's preprocessing metadata describes (`inference.export_metadata`'s
    resize / crop sizes, or `preprocessing_meta`'s crop_pct), None when it says nothing."""
    if pre.get("crop_pct"):
        return float(pre["crop_pct"])
    if pre.get("resize_square"):
        return 1.0
    short, crop = pre.get("resize_shorter_side"), pre.get("center_crop")
    if short and crop:
        # int(crop / fraction) must give back `short` (EvalTransform's rule); where float rounding of
        # crop / short lands a pixel lower, the fraction of short + 0.5 does not
        short, crop = int(short), int(crop)
        fraction = crop / short
        return min(1.0, fraction if int(crop / fraction) == short else crop / (short + 0.5))
    return None


def _static(dims) -> list[int | None]:
    return [d if isinstance(d, int) and d > 0 else None for d in dims]


class RuntimeGraph(nn.Module):
    """An exported classifier (ONNX or OpenVINO IR file) run on the CPU by ONNX Runtime / OpenVINO.

    Read from the graph: `in_chans`, `img_size` (None where the graph leaves H and W free),
    `num_classes`, and a fixed batch size if it has one (then calls are split / padded to it).
    `meta` holds the file's str -> str metadata (`convnext export` stores task, classes,
    preprocessing, weights, source). `prepare(dtype)` starts the runtime: ONNX Runtime runs fp32;
    OpenVINO takes "bf16" / "fp32" as its inference precision hint. Inference only.
    """

    def __init__(self, path: str | Path, kind: str):
        super().__init__()
        if kind not in ("onnx", "openvino"):
            raise ValueError(f"RuntimeGraph: kind must be onnx or openvino, got {kind!r}")
        self.path, self.kind = Path(path), kind
        self.training = False
        self._run: nn.Module | None = None
        self._ir = None  # the OpenVINO model read here, compiled by prepare()
        self.precision = "f32"
        try:
            if kind == "onnx":  # the session is the one inference runs (threads: torch's, set before)
                self._run = OnnxRuntimeModule(self.path)
                session = self._run.session
                ins, outs = session.get_inputs(), session.get_outputs()
                in_shapes, out_shapes = [i.shape for i in ins], [o.shape for o in outs]
                self.meta = {str(k): str(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
                self.version = self._run.version
            else:
                ov = _openvino(f"{path}: running an OpenVINO IR")
                model = self._ir = ov.Core().read_model(str(path))
                in_shapes = [[d.get_length() if d.is_static else None for d in i.get_partial_shape()]
                             for i in model.inputs]
                out_shapes = [[d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                              for o in model.outputs]
                self.meta = {}
                for key in ("task", "classes", "preprocessing", "weights", "source", "producer", "labels_stored"):
                    if model.has_rt_info(["convnext", key]):
                        self.meta[key] = str(model.get_rt_info(["convnext", key]).astype(str))
                self.version = ov.__version__
        except UserError:
            raise
        except Exception as e:  # the runtime's own parse error: a damaged or foreign file
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{path}: not a readable {'ONNX graph' if kind == 'onnx' else 'OpenVINO IR'} "
                                  f"({reason[:300]})") from None
        if len(in_shapes) != 1 or len(in_shapes[0]) != 4 or len(out_shapes) < 1 or len(out_shapes[0]) != 2 \
                or _static(out_shapes[0])[1] is None:
            raise CheckpointError(
                f"{path}: not a classifier graph (expected one (B, C, H, W) image input and (B, classes) logits; "
                f"found inputs {in_shapes} and outputs {out_shapes})")
        batch, self.in_chans, h, w = _static(in_shapes[0])
        self.batch = batch  # None: any batch size
        self.img_size = h if h is not None and h == w else None
        self.fixed_size = (h, w) if h is not None and w is not None else None
        self.num_classes = _static(out_shapes[0])[1]

    def train(self, mode: bool = True) -> "RuntimeGraph":
        """Inference only: `eval()` is a no-op."""
        if mode:
            raise RuntimeError("RuntimeGraph runs an exported inference graph; it cannot be put in training mode")
        return self

    def prepare(self, dtype: str = "fp32") -> None:
        """Ready the runtime: ONNX Runtime runs fp32 only; OpenVINO compiles the IR with `dtype` ("bf16" /
        "fp32") as its inference precision hint (once: later calls keep the first choice)."""
        if self.kind == "onnx":
            if dtype != "fp32":
                raise UserError(f"--dtype {dtype}: ONNX Runtime runs {self.path.name} in fp32 only; use --dtype fp32 "
                                f"or auto, or export --format openvino for bf16")
        elif self._run is None:
            self._run = OpenVINOModule(self._ir, precision="bf16" if dtype == "bf16" else "f32")
            self.precision, self._ir = self._run.precision, None

    def describe(self) -> str:
        if self.kind == "onnx":
            return f"CPU inference: ONNX Runtime {self.version} running the ONNX graph, fp32"
        return f"CPU inference: OpenVINO {self.version} running the IR, inference precision {self.precision}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._run is None:
            self.prepare()
        if self.fixed_size is not None and tuple(x.shape[-2:]) != self.fixed_size:
            raise ValueError(f"{self.path}: the graph takes {self.fixed_size[0]}x{self.fixed_size[1]} images, "
                             f"got {tuple(x.shape[-2:])}")
        if self.batch is None or x.shape[0] == self.batch:
            return self._run(x)
        outs = []
        for chunk in x.split(self.batch):  # a fixed-batch graph: pad the last chunk, drop the padding
            n = chunk.shape[0]
            if n < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - n, *chunk.shape[1:])])
            outs.append(self._run(chunk)[:n])
        return torch.cat(outs)
