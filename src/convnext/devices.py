"""One parser for `--device` flags (train, eval, predict, export, the Python API).

`resolve_device(text)` turns the user's text into a `torch.device` that exists on this machine,
or raises `ConfigError` naming the flag: an unknown kind ("tpu"), CUDA without a GPU, or a GPU
index past the last one would otherwise surface as a torch traceback deep inside the first `.to()`.
"""
from __future__ import annotations

from .errors import ConfigError

__all__ = ["resolve_device", "set_threads", "module_device"]


def resolve_device(text: str | None, flag: str = "--device"):
    """`torch.device` for `text`: "auto"/None (CUDA when available, else CPU), "cpu", "cuda", "cuda:N", "mps"."""
    import torch

    if text is None or str(text).strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(str(text).strip())
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} {text}: unknown device; expected auto, cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{flag} {text}: no CUDA GPU is available on this machine; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"{flag} {text}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{flag} {text}: Apple MPS is not available on this machine; use --device cpu")
        return dev
    raise ConfigError(f"{flag} {text}: unsupported device type {dev.type!r}; expected auto, cpu, cuda, cuda:N or mps")


def set_threads(n: int | None, flag: str = "--threads") -> None:
    """torch's intra-op CPU threads (None: leave torch's default); n must be >= 1."""
    if n is None:
        return
    if n < 1:
        raise ConfigError(f"{flag} {n}: must be >= 1 (CPU threads for inference)")
    import torch

    torch.set_num_threads(n)


def module_device(model):
    """The device a model's tensors live on: that of its first parameter or buffer; the CPU for a model
    holding none (an exported graph run by ONNX Runtime / OpenVINO)."""
    import torch

    for tensors in (model.parameters(), model.buffers()):
        first = next(iter(tensors), None)
        if first is not None:
            return first.device
    return torch.device("cpu")
