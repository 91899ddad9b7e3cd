"""Benchmarks: our ConvNeXt vs timm / torchvision on identical weights, and the input pipeline.

`convnext bench --help` for the command; `docs/benchmarks.md` for the protocol and the figures.
"""
from .runner import BenchConfig, OutputMismatch, check_outputs_agree, format_report, run_benchmark

__all__ = ["BenchConfig", "OutputMismatch", "check_outputs_agree", "format_report", "run_benchmark"]
