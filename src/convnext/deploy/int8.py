"""Static int8 post-training quantization of a ConvNeXt through PyTorch's PT2E flow (x86 inductor).

Flow (torchao's `quantize_pt2e`, the home of PT2E quantization since it left `torch.ao`):
`torch.export` the fp32 model (layer scale folded first) -> `prepare_pt2e` with
`X86InductorQuantizer` (default static config: per-channel symmetric int8 weights, per-tensor
affine uint8 activations, histogram observers) -> run N calibration images -> `convert_pt2e` ->
`torch.export` again and `torch.export.save` (a .pt2 file). For speed the loaded program is
compiled by inductor with `freezing=True`, which replaces each quantize -> dequantize -> conv /
linear pattern by oneDNN int8 kernels (VNNI / AMX-INT8).

What is int8: every Linear (pwconv1 and pwconv2 of every block, and the head), i.e. 95% of a
ConvNeXt's multiply-accumulates. The convolutions (stem, depthwise 7x7, downsampling) stay float
by default: quantizing them too (`quantize_convs=True`, `export --int8-convs`) measured slower
here (50.0 vs 54.6 img/s, ConvNeXt-T batch 16) and moved the logits more (docs/benchmarks.md).
Where the program carries the pre-GELU ranges recorded at calibration and the CPU has AMX-INT8 and
AVX512-VBMI, each pwconv1 + GELU and each pwconv2 runs in our own kernels instead (`amx_gelu`: GELU
as a uint8 table in the GEMM's store, where oneDNN's erf post-op costs more than the GEMM).
LayerNorm, GELU, the residual adds and the pooling run on dequantized values: fp32, or bf16 when
the program is run under `torch.autocast("cpu", torch.bfloat16)` (`Int8Model(..., mixed_bf16=True)`,
the "int8-mixed-bf16" mode; `load_int8` turns it on where the CPU has native bf16).
"""
from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from ..outputs import chance_note
from .cpu import _COMPILE_AFTER_CALLS, freezing, prepare_eager, quiet_library_notes
from .features import cpu_features

__all__ = ["quantize_int8", "save_int8", "load_int8", "Int8Model", "FLOAT_OPS_NOTE", "float_ops_note", "export_int8",
           "format_int8_report", "export_int8_cli"]

FLOAT_OPS_NOTE = ("int8: every Linear (pwconv1, pwconv2, head){convs}; {floats}LayerNorm, GELU, residual adds and "
                  "pooling stay in {mixed}")


def float_ops_note(mixed: str, quantize_convs: bool = False) -> str:
    """The line saying which ops are int8 and which stay in `mixed` ("fp32" / "bf16 ...")."""
    return FLOAT_OPS_NOTE.format(
        convs=" and every convolution (stem, depthwise 7x7, downsampling)" if quantize_convs else "",
        floats="" if quantize_convs else "the convolutions (stem, depthwise 7x7, downsampling), ", mixed=mixed)


def _pt2e(quantize_convs: bool = False):
    try:
        with quiet_library_notes():  # torchao's import logs a torch deprecation note
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
            from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
                X86InductorQuantizer,
                get_default_x86_inductor_quantization_config,
            )
    except ImportError as e:
        from ..errors import UserError

        raise UserError(f"int8 (PT2E) needs torchao (pip install torchao, or pip install 'convnext[deploy]'): {e}") \
            from None
    quantizer = X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config())
    if not quantize_convs:  # Linears only
        quantizer.set_module_type_qconfig(torch.nn.Conv2d, None)
    return prepare_pt2e, convert_pt2e, quantizer


def _export(module: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(module, (example,), dynamic_shapes=({0: batch},), strict=False)


def quantize_int8(
    model: nn.Module, calibration: Iterable[torch.Tensor], img_size: int, in_chans: int = 3,
    quantize_convs: bool = False,
) -> torch.export.ExportedProgram:
    """Calibrate `model` on the fp32 (B, C, S, S) batches of `calibration`; the int8 ExportedProgram.

    The program takes any batch size (dynamic batch dimension) at `img_size`. Every Linear is int8;
    `quantize_convs=True` quantizes the stem, depthwise and downsampling convolutions too (measured
    slower on a VNNI CPU, and a larger logit change).
    """
    prepare_pt2e, convert_pt2e, quantizer = _pt2e(quantize_convs)
    module = prepare_eager(model, "fp32")  # fp32, layer scale folded into pwconv2 (one GEMM fewer inputs)
    example = torch.randn(2, in_chans, img_size, img_size)
    graph = _export(module, example).module()
    prepared = prepare_pt2e(graph, quantizer)
    from .amx_gelu import RangeRecorder

    recorder = RangeRecorder(prepared)  # runs the observers, and records each GELU's input range
    seen = 0
    with torch.no_grad():
        for batch in calibration:
            recorder.run(batch.float())
            seen += batch.shape[0]
    if not seen:
        raise ValueError("int8 calibration needs at least one image")
    converted = convert_pt2e(prepared)
    program = _export(converted, example)
    # what the fused pwconv1 + GELU kernel needs (`amx_gelu`); saved with the program by `save_int8`
    program.gelu_ranges = recorder.result()
    return program


def save_int8(program: torch.export.ExportedProgram, path: str | Path, meta: dict[str, str] | None = None) -> None:
    """Write the program as a .pt2 file; `meta` (str -> str: classes, preprocessing) rides along as extra files,
    and so do the pre-GELU ranges `quantize_int8` recorded."""
    import json

    extra = dict(meta or {})
    if getattr(program, "gelu_ranges", None):
        extra["gelu_ranges"] = json.dumps(program.gelu_ranges)
    with quiet_library_notes():
        torch.export.save(program, str(path), extra_files=extra)


def _drop_dtype_asserts(module: torch.fx.GraphModule) -> None:
    """Remove the `aten._assert_tensor_metadata` checks `torch.export` records after dtype-keeping ops.

    They pin the dtypes seen at export (fp32); under bf16 autocast (int8-mixed-bf16) the float ops
    run in bf16, so the checks would fail at the first call. They compute nothing.
    """
    graph = module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.aten._assert_tensor_metadata.default:
            graph.erase_node(node)
    graph.lint()
    module.recompile()


class Int8Model(nn.Module):
    """fp32 (B, 3, S, S) in, fp32 logits out, through the int8 program compiled by inductor.

    Attributes read off the program: `in_chans`, `img_size` (the program's fixed input side) and
    `num_classes`. Each new batch size is compiled at its first call, except a batch smaller than one
    already compiled: its first two calls are padded to that size (the last batch of an evaluation
    costs no compile), its third compiles it (a caller whose steady batch is smaller).
    """

    def __init__(self, program: torch.export.ExportedProgram, mixed_bf16: bool, compile: bool = True,
                 fused_gelu: bool | None = None):
        super().__init__()
        self.module = program.module()
        self.training = False
        # pwconv1 + GELU in our AMX kernel (`amx_gelu`) where the program carries its pre-GELU ranges
        # and this CPU runs the kernel (None: then on); else oneDNN's matmul with its erf post-op
        self.fused_gelu = self.fused_dequant = self.fused_norms = 0
        self.bf16_stream = False  # the first stage's residual stream cast to bf16 (int8-mixed-bf16 with our kernels)
        self.fused_residuals = 0  # pwconv2s with their block's residual add in the store
        self.fused_mlps = 0  # of them, blocks whose pwconv1 + pwconv2 run in one pass (`convnext::qmlp`)
        self._fuse_dequant = False
        ranges = getattr(program, "gelu_ranges", None)
        if fused_gelu is not False and ranges:
            from . import amx_gelu

            if amx_gelu.available():
                self.fused_gelu = amx_gelu.fuse_gelu_tables(self.module, ranges)
                # and each depthwise conv + LayerNorm + quantize ahead of it, in one pass
                self.fused_norms = amx_gelu.fuse_dwconv_norms(self.module) if self.fused_gelu else 0
                self._fuse_dequant = bool(self.fused_gelu)  # pwconv2 too, at the first call (its dtype known)
            elif fused_gelu:
                raise RuntimeError("Int8Model(fused_gelu=True): this CPU or compiler cannot run the AMX kernel")
        self.mixed_bf16 = False
        self.set_mixed_bf16(mixed_bf16)
        # a plain attribute, not a child module: the weights appear once in state_dict()
        object.__setattr__(self, "_fn", torch.compile(self.module, dynamic=False) if compile else self.module)
        self.compiled = compile
        self.cpp_wrapper = compile  # False after a C++ wrapper build failed (or without compile)
        self._built: set[tuple] = set()  # input shapes compiled so far
        self._calls: dict[tuple, int] = {}  # calls of each shape not compiled yet
        shapes = _io_shapes(self.module)
        if shapes is not None:
            self.in_chans, self.img_size, self.num_classes = shapes

    def train(self, mode: bool = True) -> "Int8Model":
        """Inference only: `eval()` is a no-op (an exported program has no training mode to switch)."""
        if mode:
            raise RuntimeError("Int8Model is an inference program; it cannot be put in training mode")
        self.training = False
        return self

    def set_mixed_bf16(self, mixed_bf16: bool) -> None:
        """Run the float ops (LayerNorm, GELU, convolutions, ...) in bf16 (int8-mixed-bf16) or in fp32.
        Before the first call only: the choice is compiled in."""
        if getattr(self, "_built", None):
            raise RuntimeError("Int8Model.set_mixed_bf16: the program is already compiled")
        if mixed_bf16 and not self.mixed_bf16:
            _drop_dtype_asserts(self.module)
        self.mixed_bf16 = mixed_bf16

    def describe(self) -> str:
        floats = "bf16 (int8-mixed-bf16)" if self.mixed_bf16 else "fp32"
        runs = ("inductor (freezing, oneDNN int8 kernels" + (", C++ wrapper" if self.cpp_wrapper else "") +
                "), each batch size compiled once" if self.compiled else "eager (not compiled)")
        fused = (f"; {self.fused_gelu} pwconv1 + GELU in our AMX kernel (GELU as a uint8 table)" if self.fused_gelu
                 else "")
        if self.fused_dequant:
            fused += f", {self.fused_dequant} pwconv2 too"
            if self.fused_residuals:
                fused += f" ({self.fused_residuals} with the residual add in the store)"
            if self.fused_mlps:
                fused += f", {self.fused_mlps} blocks' pwconv1 + pwconv2 in one pass (the uint8 hidden kept in cache)"
        if self.fused_norms:
            fused += f", {self.fused_norms} depthwise conv + LayerNorm + quantize in one pass"
        if self.bf16_stream:
            fused += ", stage 1's residual stream in bf16"
        return f"CPU inference: int8 program (PT2E), float ops in {floats}, {runs}{fused}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, shape = x.shape[0], tuple(x.shape)
        if shape not in self._built:
            self._calls[shape] = self._calls.get(shape, 0) + 1
            larger = [b for (b, *rest) in self._built if b > n and tuple(rest) == shape[1:]]
            if larger and self._calls[shape] < _COMPILE_AFTER_CALLS:  # run a compiled size, do not compile yet
                x = torch.cat([x, x[-1:].expand(min(larger) - n, *shape[1:])])
        # freezing must be on whenever inductor compiles (the first call of each input shape): it
        # folds the weights' int8 prepacking. Set as a global patch, not torch.compile(options=...):
        # with the options dict this torch fails on onednn.qconv_prepack under fake tensors.
        # Inductor's C++ wrapper calls the kernels without Python in between (1.06x for
        # ConvNeXt-T int8-mixed-bf16 at batch 16, docs/benchmarks.md); where it does not build,
        # the Python wrapper is used from then on.
        if self.cpp_wrapper:
            try:
                return self._run(x, cpp_wrapper=True)[:n]
            except torch._dynamo.exc.BackendCompilerFailed:  # the C++ wrapper is a speed-up only
                self.cpp_wrapper = False
                torch._dynamo.reset()
        return self._run(x, cpp_wrapper=False)[:n]

    def _run(self, x: torch.Tensor, cpp_wrapper: bool) -> torch.Tensor:
        if self._fuse_dequant:  # before the first compile: the output dtype (bf16 or fp32) is decided by now
            from . import amx_gelu

            self._fuse_dequant = False
            self.fused_dequant = amx_gelu.fuse_dequant_linears(self.module, bf16=self.mixed_bf16)
            self.fused_residuals = sum(str(n.target).startswith("convnext.qlinear_dequant_residual")
                                       for n in self.module.graph.nodes)
            if not os.environ.get("CONVNEXT_NO_FUSED_MLP"):  # both pointwise convs of a block in one pass
                self.fused_mlps = amx_gelu.fuse_int8_mlps(self.module)
            if self.mixed_bf16 and self.fused_norms:  # autocast leaves the stem's LayerNorm output in fp32
                self.bf16_stream = amx_gelu.first_stream_in_bf16(self.module)
        shape = tuple(x.shape)
        quiet = quiet_library_notes() if shape not in self._built else contextlib.nullcontext()
        # One grad mode and one kind of input for every call: the compiled graph is guarded on both (a
        # caller under inference_mode, then under no_grad, would otherwise compile twice).
        with quiet, torch.inference_mode(False), torch.no_grad(), freezing(cpp_wrapper=cpp_wrapper), \
                torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.mixed_bf16):
            out = self._fn(x.clone() if x.is_inference() else x).float()
        self._built.add(shape)
        return out


def _io_shapes(module: torch.fx.GraphModule) -> tuple[int, int, int] | None:
    """(input channels, input side, classes) from the shapes recorded in the program's graph: a
    (B, C, S, S) input and a (B, classes) output. None for a program of another form."""
    nodes = list(module.graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder" and "val" in n.meta]
    outputs = [n for n in nodes if n.op == "output"]
    if len(inputs) != 1 or not outputs:
        return None
    out = outputs[0].args[0]
    out = out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out
    if not isinstance(out, torch.fx.Node) or "val" not in out.meta:
        return None
    shape_in, shape_out = tuple(inputs[0].meta["val"].shape), tuple(out.meta["val"].shape)
    if len(shape_in) != 4 or len(shape_out) != 2:
        return None
    return int(shape_in[1]), int(shape_in[2]), int(shape_out[1])


def load_int8(path: str | Path, mixed_bf16: bool | None = None, compile: bool = True) -> tuple[Int8Model, dict]:
    """(model, meta) from a file written by `save_int8`. `mixed_bf16` None: on where the CPU has native bf16."""
    import json

    _pt2e()  # registers the quantized_decomposed ops the program calls
    meta: dict[str, str] = dict.fromkeys(("classes", "preprocessing", "quantization", "img_size", "crop_pct", "task",
                                          "weights", "source", "labels_stored", "gelu_ranges"), "")
    try:
        with quiet_library_notes():
            program = torch.export.load(str(path), extra_files=meta)
    except Exception as e:  # noqa: BLE001 - any failure to parse the archive is a damaged file, said in one line
        from ..errors import CheckpointError

        reason = str(e).splitlines()[0] if str(e) else ""
        raise CheckpointError(f"{path}: a torch.export program (.pt2) that does not load, damaged or written by "
                              f"another torch ({type(e).__name__}: {reason[:200]})") from None
    if mixed_bf16 is None:
        mixed_bf16 = cpu_features().native_bf16
    try:
        ranges = json.loads(meta["gelu_ranges"]) if meta.get("gelu_ranges") else None
        program.gelu_ranges = [(float(lo), float(hi)) for lo, hi in ranges] if ranges else None
    except (ValueError, TypeError):
        program.gelu_ranges = None  # an unreadable entry: oneDNN's GELU post-op, as for older files
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


# ------------------------------------------------------------------------- export on user data
def image_root(data: str | Path) -> Path:
    """The folder `--calib-data` names, or its validation split when it is a dataset root (only
    train / val / test folders inside, as `convnext eval --data` takes)."""
    from ..data.datasets import VAL_SPLIT_NAMES, class_folders
    from ..errors import DataError

    root = Path(data)
    if not root.is_dir():
        raise DataError(f"--calib-data {data}: no such folder (expected a folder of images, e.g. an ImageFolder split)")
    folders = class_folders(root)
    split = next((s for s in VAL_SPLIT_NAMES if s in folders), None)
    return root / split if split is not None and set(folders) <= {"train", *VAL_SPLIT_NAMES} else root


def _labelled_images(
    root: Path, classes: list[str] | None, num_classes: int | None = None, seed: int = 0,
) -> tuple[list[Path], list[int] | None, str | None]:
    """Every image under `root` (`image_root(--calib-data)`) in a fixed shuffle, with labels where they
    can be known, and their source.

    Labels are the model's class names when each image's class folder is one of them ("class names").
    Otherwise, when `root` holds exactly `num_classes` class folders, the sorted folder order is the
    label order, as `convnext eval` reads an ImageFolder (an ImageNet val folder of wnids against a
    checkpoint whose classes are readable names: "folder order"). Else (None, None): agreement only.
    """
    from ..data.datasets import class_folders, list_images
    from ..errors import DataError

    paths = [Path(p) for p in list_images(root)]
    if not paths:
        raise DataError(f"--calib-data {root}: no image files found")
    order = torch.randperm(len(paths), generator=torch.Generator().manual_seed(seed)).tolist()
    paths = [paths[i] for i in order]  # classes mixed in both the calibration and the evaluation part
    parts = [p.relative_to(root).parts for p in paths]
    folder = [q[0] if len(q) > 1 else None for q in parts]  # each image's class folder (None: directly in root)
    index = {c: i for i, c in enumerate(classes or [])}
    labels = [index.get(f) for f in folder]
    if all(x is not None for x in labels):
        return paths, labels, "class names"
    found = class_folders(root)
    if num_classes and len(found) == num_classes and all(f is not None for f in folder):
        position = {c: i for i, c in enumerate(found)}
        return paths, [position[f] for f in folder], "folder order"
    return paths, None, None


def _batches(paths: list[Path], transform: Callable, batch_size: int):
    from PIL import Image

    for start in range(0, len(paths), batch_size):
        images = []
        for p in paths[start : start + batch_size]:
            with Image.open(p) as im:
                images.append(transform(im.convert("RGB")))
        yield torch.stack(images)


def _logits(fn: Callable, batches: list[torch.Tensor], batch_size: int) -> torch.Tensor:
    """fn over every batch; a last partial batch is padded to `batch_size` (one compiled shape)."""
    outs = []
    with torch.no_grad():
        for b in batches:
            n = b.shape[0]
            if n < batch_size:
                b = torch.cat([b, b[-1:].expand(batch_size - n, *b.shape[1:])])
            outs.append(fn(b)[:n].float())
    return torch.cat(outs)


def export_int8(
    model: nn.Module,
    out: str | Path,
    *,
    data: str | Path,
    transform: Callable,
    img_size: int,
    classes: list[str] | None = None,
    metadata: dict[str, str] | None = None,
    calib_images: int = 256,
    eval_images: int = 256,
    batch_size: int = 16,
    compile: bool = True,
    quantize_convs: bool = False,
) -> dict:
    """Quantize `model` calibrated on `calib_images` images of `data`, write `out` (.pt2), and measure.

    The next `eval_images` images of `data` (disjoint from the calibration ones when there are
    enough) are run through fp32 PyTorch (`fast_cpu_model(dtype="fp32")`) and the int8 program;
    returns top-1 of both when the images' folder names are class names, their top-1 agreement,
    the max |logit difference|, and img/s of both on the last timed batch size.
    """
    from .cpu import fast_cpu_model

    root = image_root(data)
    paths, labels, labels_from = _labelled_images(root, classes, getattr(model, "num_classes", None))
    calib = paths[:calib_images]
    rest = paths[calib_images : calib_images + eval_images]
    held_out = bool(rest)
    evaluate = rest if held_out else calib[:eval_images]
    eval_labels = None
    if labels is not None:
        start = calib_images if held_out else 0
        eval_labels = torch.tensor(labels[start : start + len(evaluate)])
    in_chans = getattr(model, "in_chans", 3)
    calibrate_t = time.perf_counter()
    program = quantize_int8(model, _batches(calib, transform, batch_size), img_size, in_chans, quantize_convs)
    calibrate_s = time.perf_counter() - calibrate_t
    meta = {**(metadata or {}), "quantization": "static int8, PT2E X86InductorQuantizer, "
            f"{'Linears and convolutions' if quantize_convs else 'Linears'}, "
            f"calibrated on {len(calib)} images of {root.name}"}
    save_int8(program, out, meta)
    int8_model, _ = load_int8(out, compile=compile)
    fp32 = fast_cpu_model(model, "fp32", batch_size, img_size, candidates=("eager",))  # the reference: no compile
    batches = list(_batches(evaluate, transform, batch_size))
    ref = _logits(fp32, batches, batch_size)
    got = _logits(int8_model, batches, batch_size)  # the first call compiles
    x = batches[0] if batches[0].shape[0] == batch_size else torch.cat([batches[0]] * batch_size)[:batch_size]
    report = {
        "path": str(out), "images_from": str(root), "calibration_images": len(calib),
        "eval_images": len(evaluate), "held_out": held_out,
        "calibrate_s": calibrate_s, "top1_agreement": (got.argmax(1) == ref.argmax(1)).float().mean().item(),
        "max_abs_logit_diff": (got - ref).abs().max().item(), "max_abs_logit": ref.abs().max().item(),
        "fp32_top1": None, "int8_top1": None, "batch_size": batch_size,
        "fp32_img_per_s": batch_size / time_per_batch(fp32, x),
        "int8_img_per_s": batch_size / time_per_batch(int8_model, x),
        "fp32_path": fp32.path, "int8_mixed_bf16": int8_model.mixed_bf16, "compiled": compile,
        "quantize_convs": quantize_convs, "bf16_img_per_s": None, "bf16_path": None, "labels_from": labels_from,
        "fused_gelu": int8_model.fused_gelu, "fused_dequant": int8_model.fused_dequant,
        "fused_norms": int8_model.fused_norms, "fused_residuals": int8_model.fused_residuals,
        "fused_mlps": int8_model.fused_mlps,
        "bf16_stream": int8_model.bf16_stream, "img_size": img_size,
    }
    if cpu_features().native_bf16:  # the path predict / eval run by default on this CPU: the speed to beat
        bf16 = fast_cpu_model(model, "bf16", batch_size, img_size, candidates=("eager", "jit"))
        report.update(bf16_img_per_s=batch_size / time_per_batch(bf16, x), bf16_path=bf16.path)
    if eval_labels is not None:
        report["fp32_top1"] = 100 * (ref.argmax(1) == eval_labels).float().mean().item()
        report["int8_top1"] = 100 * (got.argmax(1) == eval_labels).float().mean().item()
        report["eval_classes"] = len(set(eval_labels.tolist()))  # as `convnext eval` counts them: classes present
    return report


def format_int8_report(r: dict) -> str:
    where = "held-out" if r["held_out"] else "calibration (too few images for a held-out set)"
    lines = [f"wrote {r['path']}: int8 (PT2E, X86InductorQuantizer), calibrated on {r['calibration_images']} images "
             f"of {r.get('images_from', '?')} (export + calibration + convert: {r['calibrate_s']:.1f} s)"]
    if r["fp32_top1"] is not None:
        source = (" (labels: the sorted class-folder order, as `convnext eval` reads an ImageFolder)"
                  if r.get("labels_from") == "folder order" else "")
        lines.append(f"top-1 on {r['eval_images']} {where} images: fp32 {r['fp32_top1']:.2f}% -> int8 "
                     f"{r['int8_top1']:.2f}% (change {r['int8_top1'] - r['fp32_top1']:+.2f} points){source}")
        note = chance_note(r["fp32_top1"], r.get("eval_classes") or 0, r["eval_images"], r.get("img_size"),
                           what="fp32 top-1")
        if note:
            lines.append(note)
    else:
        lines.append("(no labels: the images' folders are neither the model's class names nor as many as its "
                     "classes; agreement only)")
    lines.append(f"int8 vs fp32 on {r['eval_images']} {where} images: top-1 agreement {r['top1_agreement']:.2%}, "
                 f"max |logit diff| {r['max_abs_logit_diff']:.3g} (max |logit| {r['max_abs_logit']:.3g})")
    bf16 = (f"bf16 {r['bf16_img_per_s']:.1f} img/s ({r['bf16_path']}), " if r.get("bf16_img_per_s") else "")
    lines.append(f"speed at batch {r['batch_size']}: fp32 {r['fp32_img_per_s']:.1f} img/s ({r['fp32_path']}), {bf16}"
                 f"int8 {r['int8_img_per_s']:.1f} img/s (inductor{'' if r['compiled'] else ' off'})")
    lines.append(float_ops_note("bf16 (int8-mixed-bf16)" if r["int8_mixed_bf16"] else "fp32",
                                r.get("quantize_convs", False)))
    if r.get("fused_gelu"):
        pwconv2 = f"; {r['fused_dequant']} pwconv2 in our AMX int8 kernel too" if r.get("fused_dequant") else ""
        if r.get("fused_residuals"):
            pwconv2 += f", {r['fused_residuals']} of them with the block's residual add in the store"
        if r.get("fused_mlps"):
            pwconv2 += (f"; in {r['fused_mlps']} blocks both pointwise convs in one pass of ours (the uint8 hidden "
                        "kept in cache)")
        lines.append(f"GELU after {r['fused_gelu']} pwconv1: in our AMX int8 kernel, as a uint8 table applied in the "
                     f"GEMM's store (its input rounded onto the uint8 grid of the range seen at calibration){pwconv2}")
    if r.get("fused_norms"):
        lines.append(f"depthwise conv + LayerNorm + quantize of {r['fused_norms']} blocks: one pass of our AVX512 kernel, "
                     "in fp32 (the convolution's output is not rounded to bf16 before the LayerNorm)"
                     + ("; stage 1's residual stream in bf16 (autocast leaves the stem's LayerNorm output in fp32)"
                        if r.get("bf16_stream") else ""))
    return "\n".join(lines)


def export_int8_cli(loaded, out: Path, args) -> int:
    """`convnext export --format int8`: `export_int8` on a loaded classifier, its report printed."""
    from ..errors import ConfigError, UserError

    if loaded.task != "classification":
        raise UserError(f"--format int8: classifiers only (this checkpoint is a {loaded.task} model)")
    if not args.calib_data:
        raise UserError("--format int8 needs --calib-data DIR: a folder of your images to calibrate on")
    for flag, value in (("--calib-images", args.calib_images), ("--eval-images", args.eval_images),
                        ("--batch-size", args.batch_size)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    meta = {"classes": "\n".join(loaded.classes or []), "img_size": str(loaded.img_size),
            "crop_pct": "" if loaded.crop_pct is None else str(loaded.crop_pct), "source": str(loaded.source),
            "labels_stored": "1" if loaded.labels_stored else "0"}  # the checkpoint's own names, or defaults
    try:
        from ..inference.export import export_metadata

        meta.update(export_metadata(loaded, loaded.img_size))
    except ImportError:
        pass
    out.parent.mkdir(parents=True, exist_ok=True)
    report = export_int8(loaded.model, out, data=args.calib_data, transform=loaded.transform, img_size=loaded.img_size,
                         classes=loaded.classes, metadata=meta, calib_images=args.calib_images,
                         eval_images=args.eval_images, batch_size=args.batch_size,
                         quantize_convs=getattr(args, "int8_convs", False))
    print(format_int8_report(report))
    return 0
