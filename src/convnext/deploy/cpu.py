"""The fastest CPU inference path of a ConvNeXt, chosen by feature detection and by measurement.

`fast_cpu_model(model, dtype="auto")` returns a module that takes the usual fp32 (B, 3, H, W) batch
and returns fp32 logits, running inside in the precision `select_dtype` picks (bf16 on CPUs with
AMX-BF16 / AVX512-BF16, fp32 elsewhere). In bf16 the whole network is bf16 end to end: weights are
cast once (after folding layer scale into pwconv2 in fp32, `optimize_for_inference`), the input is
cast once at the stem, and the depthwise convs, LayerNorms (fp32 statistics inside the kernel,
bf16 in and out), GELUs and both pointwise GEMMs all read and write bf16 channels-last tensors;
only the logits are cast back to fp32. No autocast is involved, so nothing is re-cast per op.
On CPUs where our kernels build (`convnext.deploy.amx_gelu`: AMX-BF16 / AMX-INT8, AVX512-VBMI), each
block runs in our kernels: depthwise conv + LayerNorm in one pass (fp32 or bf16), and in bf16 pwconv1 +
bias + GELU and pwconv2 + bias + residual as AMX GEMMs with those in their stores, both in one pass
(`convnext::mlp_bf16`, the 4C hidden kept in cache) where no GRN sits between them. In fp32 the same one
pass runs on AVX-512 FMAs (`convnext::mlp_fp32`: exact fp32 arithmetic, within fp32 rounding of the model
as built).

Candidate paths, timed on the caller's batch size and resolution (interleaved rounds, median):

- "eager": the module itself, channels-last, under no_grad (fp32 where our kernels do not run: our
  oneDNN-fused Linears).
- "compile": `torch.compile` with inductor's CPU backend, `freezing=True` (weights become constants,
  so inductor pre-packs them for oneDNN / AMX GEMMs: `cpp.weight_prepack`), kernels called from
  inductor's generated C++ wrapper (no Python per kernel), and, with `max_autotune=True`,
  inductor's C++ GEMM templates (AMX micro-kernels; measured slower than oneDNN's here).
- "jit": `torch.jit.trace` + `torch.jit.freeze` + `torch.jit.optimize_for_inference` (oneDNN
  convolutions with folded weights).

The winner and every candidate's time are recorded in `.path` / `.timings`, which the CLI prints.
Before anything is timed, freed memory is kept in the process (`convnext.memory`): without it every
forward pass page-faults its largest activations in anew.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import statistics
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..memory import keep_freed_memory
from ..models.inference import fold_layer_scale, optimize_for_inference
from .features import CpuFeatures, select_dtype

__all__ = ["CpuInferenceModel", "fast_cpu_model", "CANDIDATES", "prepare_eager", "model_for_dtype",
           "quiet_library_notes"]

CANDIDATES = ("eager", "compile", "jit")
_TORCH_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


class CpuInferenceModel(nn.Module):
    """fp32 (B, 3, H, W) in, fp32 logits out; runs `runner` in `dtype` on channels-last input.

    Attributes: `dtype` ("bf16"/"fp32"), `path` (what runs, in words), `reason` (why this dtype),
    `timings` (seconds per batch of each measured candidate), `module` (the prepared nn.Module).
    """

    def __init__(self, module: nn.Module, runner: Callable, dtype: str, path: str, reason: str,
                 timings: dict[str, float] | None = None):
        super().__init__()
        self.module = module
        self._runner = runner
        self.dtype, self.path, self.reason = dtype, path, reason
        self.timings = dict(timings or {})
        self._torch_dtype = _TORCH_DTYPES[dtype]
        for name in ("num_classes", "in_chans", "stride", "config", "checkpoint_info"):  # what callers read off a model
            if hasattr(module, name):
                setattr(self, name, getattr(module, name))

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, num_classes), fp32
        x = x.to(dtype=self._torch_dtype).contiguous(memory_format=torch.channels_last)
        return self._runner(x).float()

    def describe(self) -> str:
        line = f"CPU inference: {self.path}; {self.reason}"
        if len(self.timings) > 1:
            line += " (measured s/batch: " + ", ".join(f"{k} {v:.3g}" for k, v in self.timings.items()) + ")"
        return line


def prepare_eager(model: nn.Module, dtype: str, inplace: bool = False) -> nn.Module:
    """Eval mode, frozen parameters, layer scale folded (in fp32), cast to `dtype`, channels-last."""
    model = model if inplace else copy.deepcopy(model)
    optimize_for_inference(model.float())  # fold gamma * W in fp32, then round once to bf16
    return model.to(dtype=_TORCH_DTYPES[dtype], memory_format=torch.channels_last)


def freezing(max_autotune: bool = False, cpp_wrapper: bool = True):
    """Inductor config for inference compiles: weights frozen into constants and pre-packed.

    `cpp_wrapper`: the graph's kernel calls are made from generated C++ instead of Python (measured
    on a 2-core AMX CPU, ConvNeXt-T bf16: 1.14x at batch 1, 1.05x at batch 16). A global config
    patch, active whenever inductor may compile (each new input shape), rather than
    `torch.compile(options=...)`: with the options dict, int8 graphs fail to compile here.
    """
    import torch._inductor.config as inductor_config

    return inductor_config.patch(freezing=True, max_autotune=max_autotune, cpp_wrapper=cpp_wrapper,
                                 **{"cpp.weight_prepack": True})


@contextlib.contextmanager
def quiet_library_notes():
    """Silence what torch / torchao print while a CPU program is compiled, exported or loaded, and
    which asks nothing of the user: the CUDA_HOME note of a CUDA build on a machine without a GPU,
    torchao's deprecated Enum registration, export's "No complete tensor found" on CPU weights,
    inductor's tensor copy-construct warning in its int8 lowering. Errors still surface."""
    loggers = [logging.getLogger(name) for name in ("torch.utils.cpp_extension", "torch.utils._pytree")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        warnings.filterwarnings("ignore", message="To copy construct from a tensor", module="torch._inductor")
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)


def _compiled(module: nn.Module, example: torch.Tensor, max_autotune: bool) -> Callable:
    """`module` compiled for `example`'s shape, with the C++ wrapper where it builds (else without)."""
    try:
        return _compiled_with(module, example, max_autotune, cpp_wrapper=True)
    except Exception:  # noqa: BLE001 - the C++ wrapper is a speed-up only; the Python wrapper always works
        torch._dynamo.reset()
        return _compiled_with(module, example, max_autotune, cpp_wrapper=False)


# A new input shape is compiled on its third call; its first two run eager. A last partial batch of
# an evaluation does not cost a compile, and a caller whose steady batch differs from the one timed
# still ends up on the compiled path.
_COMPILE_AFTER_CALLS = 3


def _compiled_with(module: nn.Module, example: torch.Tensor, max_autotune: bool, cpp_wrapper: bool) -> Callable:
    fn = torch.compile(module, dynamic=False)
    first = tuple(example.shape)  # compiled at once, below
    calls: dict[tuple, int] = {}

    def run(x):
        shape = tuple(x.shape)
        compiled = shape in run.compiled_shapes
        if not compiled:
            calls[shape] = calls.get(shape, 0) + 1
            if shape != first and calls[shape] < _COMPILE_AFTER_CALLS:
                return module(x)
        quiet = contextlib.nullcontext() if compiled else quiet_library_notes()  # inductor compiles this call
        with quiet, torch.no_grad(), freezing(max_autotune, cpp_wrapper):  # freezing needs no_grad
            out = fn(x)
        run.compiled_shapes.add(shape)
        return out

    run.compiled_shapes = set()  # the input shapes inductor has compiled
    run(example)  # compile now
    run.cpp_wrapper = cpp_wrapper
    return run


def _jit(module: nn.Module, example: torch.Tensor) -> Callable:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings on shape checks; torch.jit deprecation notes
        traced = torch.jit.trace(module, example, check_trace=False)
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
        frozen(example)
    return frozen


def _time(fn: Callable, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        fn(x)
    return time.perf_counter() - start


def _measure(runners: dict[str, Callable], x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds per call of each runner over `repeats` rounds; the order rotates per round."""
    names = list(runners)
    for name in names:
        _time(runners[name], x)  # warm-up (allocator, oneDNN primitive cache)
    samples = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            samples[name].append(_time(runners[name], x))
    return {n: statistics.median(s) for n, s in samples.items()}


def _fuse_dw_norms(module: nn.Module) -> int:
    """Switch every ConvNeXt block of `module` whose depthwise conv + LayerNorm our AVX512 kernel takes
    (`convnext.deploy.amx_gelu`, built at first use, on CPUs where our AMX kernels run) to it; how many."""
    from ..models.fast import depthwise_kernel_takes
    from ..models.layers import Block
    from . import amx_gelu

    blocks = [m for m in module.modules() if isinstance(m, Block) and depthwise_kernel_takes(
        m.dwconv.out_channels, m.dwconv.kernel_size, m.dwconv.stride, m.dwconv.padding, m.dwconv.dilation,
        m.dwconv.groups)]
    if not blocks or os.environ.get("CONVNEXT_NO_FUSED_DW_NORM") or not amx_gelu.available():
        return 0
    for block in blocks:  # the kernel's parameters, fp32 and packed once (not saved with the weights)
        conv, norm = block.dwconv, block.norm
        for name, value in (("w", amx_gelu.pack_depthwise(conv.weight.detach())), ("b", conv.bias),
                            ("g", norm.weight), ("beta", norm.bias)):
            block.register_buffer(f"_dw_norm_{name}", value.detach().float().contiguous(), persistent=False)
        block.fused_dw_norm = True
    return len(blocks)


def _linear_packing(linear: nn.Linear) -> tuple | None:
    """(packed bf16 weight, fp32 bias, K step) of a Linear our bf16 AMX GEMMs take (output features a multiple
    of 32, an even number of inputs); else None."""
    from . import amx_gelu

    n, k = linear.weight.shape
    ks = amx_gelu._step(2 * k)
    if n % 32 or ks is None:
        return None
    b = linear.bias.detach().float() if linear.bias is not None else torch.zeros(n)
    return amx_gelu.pack_weight(linear.weight.detach().to(torch.bfloat16).contiguous(), ks), b.contiguous(), ks


def _fuse_linears(module: nn.Module) -> tuple[int, int]:
    """Switch every ConvNeXt block of a bf16 `module` whose pwconv1 our bf16 AMX GEMM takes to our kernels
    (pwconv1 + GELU; pwconv2 + bias + residual too where its shape suits; both in one pass, `convnext::mlp_bf16`,
    where both are taken and no GRN sits between them, unless CONVNEXT_NO_FUSED_MLP is set); how many blocks,
    and how many of them in one pass."""
    from ..models.layers import Block
    from . import amx_gelu

    blocks = [m for m in module.modules() if isinstance(m, Block) and m.pwconv1.weight.dtype == torch.bfloat16]
    if not blocks or os.environ.get("CONVNEXT_NO_FUSED_LINEARS") or not amx_gelu.available():
        return 0, 0
    switched = one_pass = 0
    for block in blocks:
        first = _linear_packing(block.pwconv1)
        if first is None:
            continue
        fold_layer_scale(block)  # done by `prepare_eager` already: pwconv2's kernel reads no gamma
        second = _linear_packing(block.pwconv2) or (None, None, 0)
        for i, (weight, bias, ks) in ((1, first), (2, second)):
            block.register_buffer(f"_pw{i}_w", weight, persistent=False)
            block.register_buffer(f"_pw{i}_b", bias, persistent=False)
            setattr(block, f"_pw{i}_ks", ks)
        block.fused_linears = True
        block.fused_mlp = (second[2] == 64 and isinstance(block.grn, nn.Identity)
                           and not os.environ.get("CONVNEXT_NO_FUSED_MLP"))
        switched += 1
        one_pass += block.fused_mlp
    return switched, one_pass


def _fuse_fp32_mlps(module: nn.Module) -> int:
    """Switch every ConvNeXt block of an fp32 `module` without GRN to our one-pass fp32 MLP kernel (pwconv1 + GELU +
    pwconv2 + bias + residual, `convnext::mlp_fp32`) where our kernels run, unless CONVNEXT_NO_FUSED_MLP is set;
    how many."""
    from ..models.layers import Block
    from . import amx_gelu

    blocks = [m for m in module.modules() if isinstance(m, Block) and m.pwconv1.weight.dtype == torch.float32
              and isinstance(m.grn, nn.Identity)]
    if not blocks or os.environ.get("CONVNEXT_NO_FUSED_MLP") or not amx_gelu.available():
        return 0
    for block in blocks:
        fold_layer_scale(block)  # done by `prepare_eager` already: the kernel reads no gamma
        for i, linear in ((1, block.pwconv1), (2, block.pwconv2)):
            weight, bias = amx_gelu.pack_fp32(linear.weight, linear.bias)
            block.register_buffer(f"_pw{i}_w", weight, persistent=False)
            block.register_buffer(f"_pw{i}_b", bias, persistent=False)
        block.fused_mlp_fp32 = True
    return len(blocks)


def fast_cpu_model(
    model: nn.Module,
    dtype: str = "auto",
    batch: int = 16,
    img_size: int | tuple[int, int] = 224,
    *,
    candidates: Sequence[str] | None = None,
    max_autotune: bool = False,
    repeats: int = 3,
    in_chans: int | None = None,
    features: CpuFeatures | None = None,
    inplace: bool = False,
) -> CpuInferenceModel:
    """The fastest CPU inference path of `model` for (batch, in_chans, H, W) inputs, (H, W) = img_size (an int: square).

    Args:
        model: a classification ConvNeXt (any nn.Module taking NCHW images works).
        dtype: "auto" (bf16 where the CPU multiplies bf16 natively, else fp32), "bf16" or "fp32".
        batch, img_size: the input shape the candidates are timed (and compiled) for.
        candidates: subset of `CANDIDATES` to try; default all three, in either dtype (in fp32 at
            batch 1 inductor measured 1.3-1.4x our eager oneDNN path here, at batch 16 at parity:
            docs/benchmarks.md). Compiling takes tens of seconds; pass ("eager",) for a quick start.
            With one candidate nothing is timed.
        max_autotune: let inductor benchmark its C++ GEMM templates (slower compile).
        repeats: timed rounds per candidate.
        features: CPU features to decide on (tests pass made-up ones); default this machine's.
        inplace: prepare `model` itself instead of a copy (saves one copy of the weights). Either way the
            prepared module is for inference with the weights it had: layer scale is folded and, where our
            kernels run, each block's depthwise conv + LayerNorm parameters (and in bf16 its pointwise
            weights) are packed once; prepare it again after changing them.
    """
    chosen, reason = select_dtype(dtype, "cpu", features)
    kept = keep_freed_memory()  # no page faults on the large activations (convnext/memory.py)
    if candidates is None:
        candidates = CANDIDATES
    unknown = [c for c in candidates if c not in CANDIDATES]
    if unknown or not candidates:
        raise ValueError(f"candidates must be a non-empty subset of {CANDIDATES}, got {tuple(candidates)}")
    module = prepare_eager(model, chosen, inplace=inplace)
    fused = _fuse_dw_norms(module)
    linears, one_pass = _fuse_linears(module) if chosen == "bf16" else (0, 0)
    fp32_mlps = _fuse_fp32_mlps(module) if chosen == "fp32" else 0
    in_chans = in_chans or getattr(model, "in_chans", 3)
    height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    example = torch.randn(batch, in_chans, height, width).to(_TORCH_DTYPES[chosen])
    example = example.contiguous(memory_format=torch.channels_last)

    runners: dict[str, Callable] = {}
    failures: dict[str, str] = {}
    for name in candidates:
        try:
            if name == "eager":
                runners[name] = module
            elif name == "compile":
                runners[name] = _compiled(module, example, max_autotune)
            else:
                runners[name] = _jit(module, example)
        except Exception as e:  # noqa: BLE001 - a backend that fails here is skipped, and said so
            failures[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
    if not runners:
        raise RuntimeError(f"no CPU inference path could be built: {failures}")
    timings = _measure(runners, example, repeats) if len(runners) > 1 else {}
    best = min(timings, key=timings.get) if timings else next(iter(runners))
    words = {"eager": "eager channels-last" + ("" if fused or linears or fp32_mlps else " (oneDNN kernels)"),
             "compile": "torch.compile inductor CPU, freezing + weight prepack"
                        + (", C++ wrapper" if getattr(runners.get("compile"), "cpp_wrapper", False) else "")
                        + (", max-autotune" if max_autotune else ""),
             "jit": "torch.jit freeze + optimize_for_inference (oneDNN)"}
    path = f"{chosen} {words[best]}, layer scale folded"
    if fused and best != "jit":  # TorchScript traces the textbook ops
        path += f", depthwise conv + LayerNorm of {fused} blocks in one pass of ours"
    if linears and best != "jit":
        path += f", pointwise convs of {linears} blocks in bf16 AMX GEMMs of ours (GELU / residual in their store"
        path += f"; of {one_pass}, both in one pass, the 4C hidden kept in cache)" if one_pass else ")"
    if fp32_mlps and best != "jit":
        path += (f", pointwise convs of {fp32_mlps} blocks in one fp32 pass of ours (AVX-512 FMA; GELU and residual "
                 "in its stores, the 4C hidden kept in cache)")
    if len(timings) > 1:
        path += f", fastest of {len(timings)} measured at batch {batch}, "
        path += f"{height}px" if height == width else f"{height}x{width}px"
    if kept:
        path += ", freed memory kept for reuse"
    if failures:
        path += "; failed: " + "; ".join(f"{k} ({v})" for k, v in failures.items())
    return CpuInferenceModel(module, runners[best], chosen, path, reason, timings)


def model_for_dtype(model: nn.Module, dtype: str, device, batch_size: int, img_size: int, *,
                    task: str = "classification", amp: str = "off", compile: bool = False) -> tuple[nn.Module, str]:
    """(the module to run, a line saying what runs) for `convnext predict` / `eval --dtype`.

    On CPU with "auto" on a CPU with native bf16, or with "bf16": `fast_cpu_model` (eager and
    TorchScript-oneDNN timed; with `compile` also inductor). "fp32", and "auto" elsewhere: `fast_cpu_model`'s
    exact fp32 eager path (layer scale folded, our one-pass kernels where they run; with `compile` inductor's
    is timed too). Other devices, other tasks, or an --amp run: as it is.
    """
    from ..errors import UserError

    device_type = getattr(device, "type", str(device).split(":")[0])
    if device_type == "cpu":  # every task on CPU: detection / segmentation activations are larger still
        keep_freed_memory()
    if device_type != "cpu" or task != "classification" or amp != "off":
        if dtype == "bf16" and amp == "off":
            raise UserError(f"--dtype bf16: the bf16 path is for classifiers on CPU (here {task} on {device_type}); "
                            "use --amp bf16")
        return model, ""
    chosen = select_dtype(dtype, "cpu")[0]  # fast_cpu_model says why, in its description
    if chosen == "fp32":  # exact fp32: our eager path (our kernels where they run), or inductor's with --compile
        candidates = ("eager", "compile") if compile else ("eager",)
    else:
        candidates = CANDIDATES if compile else ("eager", "jit")
    fast = fast_cpu_model(model, dtype, batch_size, img_size, candidates=candidates, inplace=True)
    return fast, fast.describe()
