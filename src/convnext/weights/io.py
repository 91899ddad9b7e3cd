"""Reading and writing weight files safely.

Only two formats are ever read: safetensors, and PyTorch pickles loaded with
`torch.load(..., weights_only=True)`, whose restricted unpickler refuses any object other than
tensors and plain containers. A pickle carrying code (a `__reduce__` payload) is therefore refused
before anything in it runs. One exception, read without running anything either: OpenMMLab
training checkpoints (mmengine / mmcv Runner files: `state_dict` beside `meta` / `message_hub`
holding mmengine objects and numpy arrays) are read by `runner_unpickle`'s allow-list unpickler,
which turns every other object into an inert placeholder, and the reader says so.

A weight file holds either a bare state dict or a wrapper around one:
`{"model": sd}` / `{"model_ema": sd}` (official FAIR checkpoints), `{"state_dict": sd}`
(Lightning and many others), or our own training checkpoints
(`{"format": "convnext-train-v1", "model": sd, "model_ema": sd?, "model_config": {...},
"labels": [...], ...}`). `save_state_dict` writes `{"model": sd, **metadata}` (.pt) or a
safetensors file whose header metadata holds the same entries as JSON.
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from ..errors import CheckpointError, UserError  # noqa: F401  (re-exported)

__all__ = [
    "CheckpointError",
    "TRAIN_FORMAT",
    "read_checkpoint",
    "is_exported_program",
    "runtime_graph_kind",
    "unwrap_state_dict",
    "load_state_dict_file",
    "save_state_dict",
    "read_metadata",
    "read_labels",
    "WEIGHTS_CHOICES",
    "reported_weights",
    "select_weights",
    "check_output_path",
    "printable",
]

TRAIN_FORMAT = "convnext-train-v1"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # looked up when given a directory (HF layout)
_WRAPPER_KEYS = ("model", "state_dict", "module")  # nesting used by common training frameworks
_EMA_KEYS = ("model_ema", "state_dict_ema")  # official / ours, timm's train script


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No weight file at the path given (a CheckpointError that `except FileNotFoundError` also catches)."""


def _resolve(path: str | os.PathLike) -> Path:
    text = str(path)
    if "://" in text:
        raise CheckpointError(f"{text}: URLs are not supported; download the file first")
    p = Path(path).expanduser()
    if p.is_dir():
        for name in _WEIGHT_FILES:
            if (p / name).is_file():
                return p / name
        raise CheckpointNotFoundError(f"checkpoint directory {p} contains none of {', '.join(_WEIGHT_FILES)}")
    if not p.exists():
        raise CheckpointNotFoundError(f"checkpoint file not found: {p}")
    return p


def read_checkpoint(path: str | os.PathLike, mmap: bool = False) -> dict[str, Any]:
    """The raw top-level object of a weight file (tensors, dicts, lists, str, numbers only).

    safetensors files come back as `{"model": tensors, **metadata}` so both formats look alike.
    `mmap=True` maps a torch zip archive instead of reading it: the keys and small values are read,
    tensor data only when touched (a cheap look at what a large file holds).
    """
    p = _resolve(path)
    if _file_kind(p) == "safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{p}: not a readable safetensors file ({e})") from None
        return {"model": tensors, **read_metadata(p)}
    if _is_torchscript_archive(p):  # torch.load would only point at torch.jit.load, which runs its code
        raise CheckpointError(
            f"{p}: a TorchScript module (e.g. from `convnext export --format torchscript`), not a weight file: run "
            f"it with torch.jit.load; `convnext predict` and `convnext eval` run the checkpoint it was exported "
            f"from, or its .onnx / OpenVINO .xml / int8 .pt2 export")
    try:
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
        except RuntimeError:
            if not mmap:
                raise
            obj = torch.load(p, map_location="cpu", weights_only=True)  # a legacy (non-zip) file: read it
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        # torch names a forbidden global ("... GLOBAL posix.system ..."): a pickle carrying code.
        culprit = next((line for line in lines if "GLOBAL" in line), None)
        runner = _openmmlab_runner_file(p) if culprit is not None else None
        if runner is not None:
            return runner
        if culprit is not None:
            raise CheckpointError(
                f"{p}: refused to load. Only weights-only checkpoints (tensors, dicts, lists, numbers, strings; "
                f"torch.load(weights_only=True)) and .safetensors files are accepted, and this file contains "
                f"other Python objects that could run code when unpickled. Nothing from it was executed. ({culprit})"
            ) from None
        detail = next((line for line in lines if line.startswith("Unsupported")), lines[-1] if lines else "")
        raise CheckpointError(
            f"{p}: not a readable weights-only PyTorch checkpoint ({detail}). Only files that "
            f"torch.load(weights_only=True) accepts and .safetensors files are read; nothing from it was executed."
        ) from None
    except (RuntimeError, EOFError, OSError) as e:
        if is_exported_program(p):
            raise CheckpointError(
                f"{p}: a torch.export program (.pt2, e.g. from `convnext export --format int8`), not a weight "
                f"file: `convnext predict` and `convnext eval` run it; its float weights are not in it (use the "
                f"checkpoint it was exported from)") from None
        reason = str(e).splitlines()[0] if str(e) else repr(e)
        raise CheckpointError(f"{p}: not a readable PyTorch checkpoint ({reason})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{p}: expected a state dict or a dict wrapping one, found {type(obj).__name__}")
    return dict(obj)


def is_exported_program(path: str | os.PathLike) -> bool:
    """Whether `path` is a `torch.export.save` archive (a .pt2 program, as `convnext export --format
    int8` writes): a zip holding `<name>/archive_format` = "pt2". Reads the zip's directory and that
    one small entry."""
    import zipfile

    p = Path(path).expanduser()
    try:
        if not p.is_file() or not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as z:
            marker = next((n for n in z.namelist() if n.endswith("archive_format") and n.count("/") == 1), None)
            return marker is not None and z.read(marker).strip() == b"pt2"
    except (OSError, zipfile.BadZipFile):
        return False


def _is_torchscript_archive(p: Path) -> bool:
    """A `torch.jit.save` zip: its records hold compiled code (`<name>/code/...`) beside the tensors."""
    import zipfile

    try:
        if not zipfile.is_zipfile(p):
            return False
        with zipfile.ZipFile(p) as z:
            return any(n.count("/") >= 2 and n.split("/")[1] == "code" for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


_ONNX_FIELD_TAGS = frozenset(b"\x12\x1a\x22\x28\x32\x3a\x42")  # ModelProto fields 2..8, after ir_version


def runtime_graph_kind(path: str | os.PathLike) -> str | None:
    """"onnx" or "openvino" for a graph file ONNX Runtime / OpenVINO run (what `convnext export
    --format onnx|openvino` writes), else None. Decided by the first bytes (an ONNX ModelProto opens
    with its ir_version field, an OpenVINO IR is XML with a <net> element) or the .onnx suffix."""
    p = Path(path).expanduser()
    try:
        if not p.is_file():
            return None
        with open(p, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith((b"<?xml", b"<net")) and b"<net" in head:
        return "openvino"
    if len(head) >= 9 and head[8:9] == b"{":  # a safetensors header
        return None
    if p.suffix.lower() == ".onnx" or (len(head) > 2 and head[0] == 0x08 and head[1] < 0x80 and
                                        head[2] in _ONNX_FIELD_TAGS):
        return "onnx"
    return None


def _openmmlab_runner_file(p: Path) -> dict[str, Any] | None:
    """An OpenMMLab checkpoint (mmcv / mmengine Runner: `state_dict` of tensors beside `meta` or
    `message_hub`) read with placeholders for its other objects (`runner_unpickle`), else None.

    Nothing in the file is imported or called; a file of any other structure stays refused.
    """
    import sys

    from .runner_unpickle import Placeholder, restricted_load

    try:
        obj, replaced = restricted_load(p)
    except Exception:  # noqa: BLE001 - any failure: keep the weights-only refusal
        return None
    if not isinstance(obj, Mapping) or not ({"meta", "message_hub"} & set(obj)):
        return None
    sd = obj.get("state_dict")
    if not _is_state_dict(sd) or isinstance(sd, Placeholder):
        return None
    shown = ", ".join(replaced[:4]) + (f" and {len(replaced) - 4} more" if len(replaced) > 4 else "")
    print(f"{p}: OpenMMLab training checkpoint; {len(replaced)} kind(s) of Python object not loaded, replaced by "
          f"inert placeholders ({shown}); nothing from the file was executed", file=sys.stderr)
    return dict(obj)


def _file_kind(p: Path) -> str:
    """"safetensors" or "torch" (zip archive or legacy pickle), from the file's first bytes."""
    try:
        with open(p, "rb") as f:
            head = f.read(9)
    except OSError as e:  # permission denied, a FIFO gone away, an I/O error
        raise CheckpointError(f"{p}: cannot read the checkpoint ({e.strerror or e})") from None
    if p.suffix == ".safetensors" or (len(head) == 9 and head[8:9] == b"{"):  # u64 header length, then JSON
        return "safetensors"
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):  # torch.save zip / pickle protocol >= 2
        return "torch"
    graph = runtime_graph_kind(p)
    if graph is not None or (p.suffix == ".bin" and p.with_suffix(".xml").is_file()):
        what = ("an ONNX graph" if graph == "onnx" else "an OpenVINO IR" if graph else
                f"OpenVINO IR weights (its graph is {p.with_suffix('.xml').name})")
        raise CheckpointError(
            f"{p}: {what}, not a weight file: `convnext predict` and `convnext eval` run "
            f"{'it' if graph else 'the .xml'}; its weights cannot be read back as a checkpoint (use the one it was "
            f"exported from)")
    raise CheckpointError(
        f"{p}: not a PyTorch checkpoint or a safetensors file (expected a torch.save zip archive, a pickle, "
        f"or a safetensors header; the file starts with {head[:8]!r})"
    )


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(
    ckpt: Mapping[str, Any], *, ema: bool = False, source: str = "checkpoint"
) -> dict[str, torch.Tensor]:
    """The state dict inside a checkpoint object (see the module docstring for the wrappers).

    Args:
        ckpt: the loaded top-level object.
        ema: take the EMA weights (`model_ema`, or timm's `state_dict_ema`); an error if there are none.
        source: name used in error messages (usually the file path).
    """
    if ema:
        key = next((k for k in _EMA_KEYS if _is_state_dict(ckpt.get(k))), None)
        if key is None:
            raise CheckpointError(f"{source}: EMA weights requested (ema=True / --ema) but the checkpoint has "
                                  f"no {' or '.join(repr(k) for k in _EMA_KEYS)} entry")
        sd = ckpt[key]
    elif _is_state_dict(ckpt):
        sd = ckpt
    else:
        sd = None
        for key in _WRAPPER_KEYS + _EMA_KEYS:  # a file holding only EMA weights is still usable
            if _is_state_dict(ckpt.get(key)):
                sd = ckpt[key]
                break
        if sd is None:
            found = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(ckpt.items())[:8])
            raise CheckpointError(
                f"{source}: no state dict found (expected tensors at the top level or under 'model', "
                f"'model_ema' or 'state_dict'; found {{{found}}})"
            )
    sd = dict(sd)
    # Checkpoints saved from DistributedDataParallel / torch.compile wrappers carry a prefix.
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


WEIGHTS_CHOICES = ("auto", "ema", "model")


def reported_weights(ckpt: Mapping[str, Any]) -> str:
    """"ema" or "model": the weights whose accuracy the checkpoint reports, i.e. what `auto` means.

    Training checkpoints say so in `reported_weights`; older ones in `metrics["evaluated"]`;
    otherwise (foreign files) the EMA weights when there are any, as the paper reports EMA results.
    A claim of "ema" in a file without EMA weights is ignored.
    """
    has_ema = any(_is_state_dict(ckpt.get(k)) for k in _EMA_KEYS)
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), Mapping) else {}
    for claim in (ckpt.get("reported_weights"), metrics.get("evaluated")):
        if claim == "model" or (claim == "ema" and has_ema):
            return claim
    return "ema" if has_ema else "model"


def select_weights(
    ckpt: Mapping[str, Any], weights: str = "auto", source: str = "checkpoint"
) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, "ema" | "model") of `ckpt` for `weights` ("auto" | "ema" | "model", the --weights flag).

    A file holding a single set of weights serves every choice but an explicit "ema".
    """
    if weights not in WEIGHTS_CHOICES:
        raise CheckpointError(f"--weights {weights}: expected one of {', '.join(WEIGHTS_CHOICES)}")
    which = reported_weights(ckpt) if weights == "auto" else weights
    if which == "ema" and not any(_is_state_dict(ckpt.get(k)) for k in _EMA_KEYS):
        raise CheckpointError(f"{source}: --weights ema, but the checkpoint has no EMA weights "
                              f"({' or '.join(repr(k) for k in _EMA_KEYS)}); use --weights model")
    return unwrap_state_dict(ckpt, ema=which == "ema", source=source), which


# The CLI's output helpers live in `convnext.outputs` (re-exported here for older callers).
from ..outputs import check_output_path, printable  # noqa: E402,F401


def load_state_dict_file(path: str | os.PathLike, *, ema: bool = False) -> dict[str, torch.Tensor]:
    """Load the state dict stored in `path` (.safetensors, or a weights-only PyTorch pickle).

    Args:
        path: a file, or a directory holding `model.safetensors` / `pytorch_model.bin` (HF style).
        ema: return the EMA weights of a checkpoint that has them (`model_ema`).

    Raises:
        FileNotFoundError: `path` does not exist.
        CheckpointError: unreadable file, a pickle that is not weights-only, or no state dict inside.
    """
    return unwrap_state_dict(read_checkpoint(path), ema=ema, source=str(path))


def _json_safe(metadata: Mapping[str, Any]) -> dict[str, Any]:
    try:
        return json.loads(json.dumps(dict(metadata)))
    except TypeError as e:
        raise ValueError(f"metadata must be JSON-serialisable (dicts, lists, str, numbers): {e}") from None


def save_state_dict(
    state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, Any] | None = None
) -> Path:
    """Write a state dict atomically (temp file in the same folder, then `os.replace`).

    The format follows the extension: `.safetensors` (metadata stored as JSON strings in the header)
    or anything else as a PyTorch file holding `{"model": state_dict, **metadata}` (a bare state dict
    when there is no metadata), loadable with `weights_only=True`.

    Args:
        state_dict: name -> tensor.
        path: destination file.
        metadata: optional JSON-serialisable extras, e.g. `{"model_config": ..., "labels": [...]}`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = _json_safe(metadata or {})
    # Tensors must own contiguous, unshared storage for safetensors; cloning also detaches views.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(tensors, tmp, metadata={k: json.dumps(v) for k, v in meta.items()})
        else:
            torch.save({"model": tensors, **meta} if meta else tensors, tmp)
        umask = os.umask(0)  # read the umask (set and restore at once): mkstemp alone gives 0600
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Non-tensor entries of a weight file: `model_config`, `labels`, `model_name`, ... (may be empty)."""
    p = _resolve(path)
    if _file_kind(p) == "safetensors":
        from safetensors import safe_open

        with safe_open(str(p), framework="pt") as f:
            raw = f.metadata() or {}
        out = {}
        for k, v in raw.items():
            try:
                out[k] = json.loads(v)
            except json.JSONDecodeError:  # files written by other tools store plain strings
                out[k] = v
        return out
    ckpt = read_checkpoint(p)
    if _is_state_dict(ckpt):
        return {}
    return {k: v for k, v in ckpt.items() if k not in _WRAPPER_KEYS + _EMA_KEYS and not _is_state_dict(v)}


def read_labels(path: str | os.PathLike) -> list[str] | None:
    """Class names stored in a checkpoint (our training checkpoints and converted files), else None."""
    labels = read_metadata(path).get("labels")
    if labels is None:
        return None
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise CheckpointError(f"{path}: 'labels' must be a list of strings")
    return labels
