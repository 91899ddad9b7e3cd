"""Static int8 post-training quantization of a ConvNeXt through PyTorch's PT2E flow (x86 inductor).

Flow (torchao's `quantize_pt2e`, the home of PT2E quantization since it left `torch.ao`):
`torch.export` the fp32 model (layer scale folded first) -> `prepare_pt2e` with
`X86InductorQuantizer` (default static config: per-channel symmetric int8 weights, per-tensor
affine uint8 activations, histogram observers) -> run N calibration images -> `convert_pt2e` ->
`torch.export` again and `torch.export.save` (a .pt2 file). For speed the loaded program is
compiled by inductor with `freezing=True`, which replaces each quantize -> dequantize -> conv /
linear pattern by oneDNN int8 kernels (VNNI / AMX-INT8).

What stays in floating point: the X86 inductor quantizer annotates convolutions (stem, depthwise,
downsampling) and Linears (both pointwise GEMMs and the head) only. LayerNorm, GELU, the residual
adds and the pooling run on dequantized values: fp32, or bf16 when the program is run under
`torch.autocast("cpu", torch.bfloat16)` (`run_int8(..., mixed_bf16=True)`, the "int8-mixed-bf16"
mode; `load_int8` turns it on where the CPU has native bf16).
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from .cpu import freezing, prepare_eager
from .features import cpu_features

__all__ = ["quantize_int8", "save_int8", "load_int8", "Int8Model", "FLOAT_OPS_NOTE"]

FLOAT_OPS_NOTE = ("int8: convolutions (stem, depthwise 7x7, downsampling) and Linears (pwconv1, pwconv2, head); "
                  "LayerNorm, GELU, residual adds and pooling stay in {mixed}")


def _pt2e():
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as e:
        from ..errors import UserError

        raise UserError(f"int8 export needs torchao (pip install torchao, or pip install 'convnext[deploy]'): {e}") \
            from None
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    return prepare_pt2e, convert_pt2e, quantizer


def _export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)


def quantize_int8(
    model: nn.Module, calibration: Iterable[torch.Tensor], img_size: int, in_chans: int = 3
) -> torch.export.ExportedProgram:
    """Calibrate `model` on the fp32 (B, C, S, S) batches of `calibration`; the int8 ExportedProgram.

    The program takes any batch size (dynamic batch dimension) at `img_size`.
    """
    prepare_pt2e, convert_pt2e, quantizer = _pt2e()
    module = prepare_eager(model, "fp32")  # fp32, layer scale folded into pwconv2 (one GEMM fewer inputs)
    example = torch.randn(2, in_chans, img_size, img_size)
    graph = _export(module, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            prepared(batch.float())
            seen += batch.shape[0]
    if not seen:
        raise ValueError("int8 calibration needs at least one image")
    converted = convert_pt2e(prepared)
    return _export(converted, example)


def save_int8(program: torch.export.ExportedProgram, path: str | Path, meta: dict[str, str] | None = None) -> None:
    """Write the program as a .pt2 file; `meta` (str -> str: classes, preprocessing) rides along as extra files."""
    torch.export.save(program, str(path), extra_files=dict(meta or {}))


class Int8Model(nn.Module):
    """fp32 (B, 3, S, S) in, fp32 logits out, through the int8 program compiled by inductor."""

    def __init__(self, program: torch.export.ExportedProgram, mixed_bf16: bool, compile: bool = True):
        super().__init__()
        self.module = program.module()
        self.mixed_bf16 = mixed_bf16
        self._fn = torch.compile(self.module, dynamic=False) if compile else self.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # freezing must be on whenever inductor compiles (the first call of each input shape): it
        # folds the weights' int8 prepacking. Set as a global patch, not torch.compile(options=...):
        # with the options dict this torch fails on onednn.qconv_prepack under fake tensors.
        with torch.no_grad(), freezing(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mixed_bf16):
            return self._fn(x).float()


def load_int8(path: str | Path, mixed_bf16: bool | None = None, compile: bool = True) -> tuple[Int8Model, dict]:
    """(model, meta) from a file written by `save_int8`. `mixed_bf16` None: on where the CPU has native bf16."""
    _pt2e()  # registers the quantized_decomposed ops the program calls
    meta: dict[str, str] = {"classes": "", "preprocessing": ""}
    program = torch.export.load(str(path), extra_files=meta)
    if mixed_bf16 is None:
        mixed_bf16 = cpu_features().native_bf16
    return Int8Model(program, mixed_bf16, compile), meta


def time_per_batch(fn: Callable, x: torch.Tensor, repeats: int = 3) -> float:
    """Median seconds per call after one warm-up call."""
    with torch.no_grad():
        fn(x)
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn(x)
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)
