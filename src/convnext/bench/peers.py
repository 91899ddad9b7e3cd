"""The implementations a benchmark compares: ours and the same variant from timm / torchvision.

Every peer is built with random weights, its layer-scale / GRN parameters are drawn away from
their near-zero init (so that a wrong block changes the logits visibly), and its state dict is
converted to the official layout and loaded strictly into our model: all implementations then
hold *identical* weights and must produce the same outputs.
"""
from __future__ import annotations

import importlib
import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models import create_model
from ..weights import convert_state_dict
from .options import PEERS, RUNTIMES

__all__ = ["PEERS", "RUNTIMES", "Implementation", "build_implementations", "build_runtimes"]

# Our registry name -> the peer library's name for the same architecture.
_TIMM_NAMES = {
    **{f"convnext_{s}": f"convnext_{s}" for s in
       ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")},
    **{f"convnextv2_{s}": f"convnextv2_{s}" for s in
       ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")},
}
_TORCHVISION_NAMES = {f"convnext_{s}": f"convnext_{s}" for s in ("tiny", "small", "base", "large")}



@dataclass
class Implementation:
    name: str  # "ours", "timm", "torchvision"
    model: nn.Module
    source: str  # e.g. "timm.create_model('convnext_tiny')"
    own_precision: bool = False  # runs in its own precision: no autocast, no torch.compile, no inference_mode
    tolerance: float | None = None  # max |logit diff| vs ours; None: the benchmark's dtype default


def _timm_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    import timm

    return timm.create_model(_TIMM_NAMES[name], pretrained=False, num_classes=num_classes), \
        f"timm {timm.__version__}: timm.create_model({_TIMM_NAMES[name]!r})"


def _torchvision_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    import torchvision

    fn = getattr(torchvision.models, _TORCHVISION_NAMES[name])
    return fn(weights=None, num_classes=num_classes), \
        f"torchvision {torchvision.__version__}: torchvision.models.{_TORCHVISION_NAMES[name]}()"


_BUILDERS = {"timm": (_TIMM_NAMES, _timm_model), "torchvision": (_TORCHVISION_NAMES, _torchvision_model)}


@torch.no_grad()
def _spread_scales(model: nn.Module, generator: torch.Generator) -> None:
    """Draw layer scale (init 1e-6) and GRN (init 0) parameters from U(0.1, 1).

    At their init values every block is almost the identity, and a comparison of logits would
    not notice a broken block; trained checkpoints have scales of this order.
    """
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "layer_scale") or ".grn." in name or leaf in ("grn_gamma", "grn_beta"):
            p.copy_(torch.empty(p.shape).uniform_(0.1, 1.0, generator=generator))


def build_implementations(
    model_name: str,
    peers: list[str],
    *,
    num_classes: int = 1000,
    seed: int = 0,
) -> tuple[list[Implementation], dict[str, str]]:
    """Ours plus each available peer, all with the same (random) weights.

    Returns the implementations (ours first) and, per requested peer that could not be built,
    the reason it was skipped (library not installed, or variant not in that library).
    """
    skipped: dict[str, str] = {}
    built: list[Implementation] = []
    generator = torch.Generator().manual_seed(seed)
    for peer in peers:
        names, builder = _BUILDERS[peer]
        if model_name not in names:
            skipped[peer] = f"{peer} has no implementation of {model_name}"
            continue
        try:
            importlib.import_module(peer)
        except ImportError:
            skipped[peer] = f"{peer} is not installed (pip install {peer})"
            continue
        torch.manual_seed(seed)
        model, source = builder(model_name, num_classes)
        _spread_scales(model, generator)
        built.append(Implementation(peer, model.eval(), source))

    ours = create_model(model_name, num_classes=num_classes).eval()
    if built:
        # Ours takes the first peer's weights; every peer then holds the same numbers.
        reference = built[0].model.state_dict()
        ours.load_state_dict(convert_state_dict(reference, dst="official"), strict=True)
        for impl in built[1:]:
            impl.model.load_state_dict(convert_state_dict(ours.state_dict(), dst=impl.name), strict=True)
    else:
        torch.manual_seed(seed)
        _spread_scales(ours, generator)
    return [Implementation("ours", ours, f"convnext.create_model({model_name!r})"), *built], skipped


def build_runtimes(
    ours: nn.Module, runtimes: list[str], img_size: int, workdir: str | Path | None = None,
    in_chans: int = 3,
) -> tuple[list[Implementation], dict[str, str]]:
    """ONNX Runtime / OpenVINO running our ONNX export of `ours` (same weights, same graph), and ours
    as an int8 program.

    "openvino" keeps OpenVINO's default CPU precision (bf16 where the CPU has AMX / AVX512-BF16),
    "openvino-f32" pins the f32 hint. "int8" is `convnext.deploy.quantize_int8` of `ours`
    calibrated on random images, run as `load_int8` runs it (compiled; float ops in bf16 where the
    CPU has native bf16): its speed is what is measured; its logits are held to 10% of ours' largest.
    Files go to `workdir` (default a temporary folder that lives as long as the process). Returns
    the implementations and, per runtime not installed, why.
    """
    from ..deploy.runtimes import OnnxRuntimeModule, OpenVINOModule, export_onnx

    skipped: dict[str, str] = {}
    wanted = []
    for name in runtimes:
        module = {"onnxruntime": "onnxruntime", "int8": "torchao"}.get(name, "openvino")
        try:
            if name == "int8":  # imported where it is used, with its import-time notes silenced
                if importlib.util.find_spec("torchao") is None:
                    raise ImportError("torchao")
            else:
                importlib.import_module(module)
                importlib.import_module("onnx")
        except ImportError:
            extra = {"onnxruntime": "export", "int8": "int8"}.get(name, "openvino")
            skipped[name] = f"{module} is not installed (pip install 'convnext[{extra}]')"
            continue
        wanted.append(name)
    built = [_int8(ours, img_size, in_chans)] if "int8" in wanted else []
    wanted = [name for name in wanted if name != "int8"]
    if not wanted:
        return built, skipped
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="convnext-bench-")  # kept: OpenVINO may map the weights file
    onnx_path = Path(workdir) / "ours.onnx"
    export_onnx(ours, onnx_path, torch.randn(2, in_chans, img_size, img_size))
    xml = None
    for name in wanted:
        if name == "onnxruntime":
            model = OnnxRuntimeModule(onnx_path)
            built.append(Implementation(name, model, f"onnxruntime {model.version}, CPU EP, our ONNX export",
                                        own_precision=True, tolerance=1e-3))
            continue
        if xml is None:
            import openvino as ov

            xml = Path(workdir) / "ours.xml"
            ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        model = OpenVINOModule(xml, precision="f32" if name == "openvino-f32" else None)
        low = any(t in model.precision.lower() for t in ("bf16", "f16", "bfloat16", "float16"))
        built.append(Implementation(
            name, model, f"OpenVINO {model.version}, CPU, IR from our ONNX, precision {model.precision}"
            + (" (hint pinned)" if name == "openvino-f32" else " (its default)"),
            own_precision=True, tolerance=None if low else 1e-3))
    return built, skipped


_INT8_CALIBRATION = (4, 4)  # random batches x images the int8 program is calibrated on (speed, not accuracy)
# The int8 program's max |logit diff| allowed, as a fraction of the largest logit seen in calibration. Random weights
# calibrated on 16 random images: the rms difference is about 2% of the logits' spread, single logits differ by up
# to 0.1 (ours' init) - 0.3 (timm's init, largest logit about 3); a broken program differs by the logits' size.
_INT8_TOLERANCE = 0.25


@torch.no_grad()
def _int8(ours: nn.Module, img_size: int, in_chans: int) -> Implementation:
    from ..deploy.features import cpu_features
    from ..deploy.int8 import Int8Model, quantize_int8

    generator = torch.Generator().manual_seed(1)
    batches = [torch.randn(_INT8_CALIBRATION[1], in_chans, img_size, img_size, generator=generator)
               for _ in range(_INT8_CALIBRATION[0])]
    largest = max(ours.eval()(b).abs().max().item() for b in batches)
    program = Int8Model(quantize_int8(ours, batches, img_size, in_chans), mixed_bf16=cpu_features().native_bf16)
    n = _INT8_CALIBRATION[0] * _INT8_CALIBRATION[1]
    return Implementation("int8", program, f"{program.describe()}; ours quantized by PT2E (X86InductorQuantizer), "
                          f"calibrated on {n} random images", own_precision=True, tolerance=_INT8_TOLERANCE * largest)
