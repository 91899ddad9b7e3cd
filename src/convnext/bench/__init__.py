"""Benchmarks: our ConvNeXt vs timm / torchvision on identical weights, and the input pipeline.

`convnext bench --help` for the command; `docs/benchmarks.md` for the protocol and the figures.
Names are imported on first use, so the command's parser does not import torch.
"""
from .._lazy import lazy_attributes

_PUBLIC = dict.fromkeys(
    ("BenchConfig", "OutputMismatch", "check_outputs_agree", "format_report", "run_benchmark"), "convnext.bench.runner"
)
__all__ = list(_PUBLIC)
__getattr__, __dir__ = lazy_attributes(__name__, _PUBLIC)
