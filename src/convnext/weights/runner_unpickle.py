"""Read checkpoints that carry other libraries' Python objects without running any code from them.

mmengine's Runner (mmdet 3.x, mmseg 1.x, mmpretrain) saves `{"meta", "state_dict", "message_hub",
"optimizer", "param_schedulers", ...}`: besides tensors, `message_hub` holds
`mmengine.logging.history_buffer.HistoryBuffer` objects and numpy arrays, so
`torch.load(weights_only=True)` refuses the file. `restricted_load` reads it with an unpickler that
resolves only an explicit allow-list (torch's tensor rebuild functions, storages, dtypes, Size,
`collections.OrderedDict`, a few builtin containers) and turns every other global into an inert
`Placeholder` class: it is never imported, called or constructed as itself. REDUCE / NEWOBJ on a
placeholder make another placeholder that only records its arguments; BUILD, APPEND(S) and
SETITEM(S) only record their data. A `__reduce__` payload such as `(os.system, ("cmd",))`
therefore becomes a `Placeholder` named "posix.system" holding ("cmd",), and nothing runs.

`weights/io.read_checkpoint` uses it only as a fallback, after `weights_only=True` refused the file,
and only keeps the result when it is an OpenMMLab checkpoint (`state_dict` of plain tensors beside
`meta` / `message_hub`); it then says that placeholders were substituted.
"""
from __future__ import annotations

import builtins
import collections
import os
import pickle
import types
from typing import Any

import torch

__all__ = ["Placeholder", "restricted_load", "placeholder_names"]


class Placeholder:
    """Stands for an object of a class that was not loaded (`qualname` names it). Inert: it holds
    the arguments and state the pickle gave it and does nothing else."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        obj = object.__new__(cls)
        obj.__dict__.update(args=args, state=None, items=[], entries={})
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # REDUCE with the class: nothing to run
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "Placeholder":  # REDUCE with an instance as callable
        return _placeholder_class(f"{self.qualname}()")(*args)

    def __setstate__(self, state: Any) -> None:  # BUILD
        self.__dict__["state"] = state

    def append(self, item: Any) -> None:  # APPEND(S)
        self.__dict__["items"].append(item)

    def extend(self, items: Any) -> None:
        self.__dict__["items"].extend(items)

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S)
        self.__dict__["entries"][key] = value

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualname}>"


def _placeholder_class(qualname: str) -> type:
    return type("Placeholder", (Placeholder,), {"qualname": qualname, "__module__": __name__})


def _allowed() -> dict[tuple[str, str], Any]:
    """(module, name) -> object: what a tensor checkpoint needs, nothing that runs user code."""
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch", "Size"): torch.Size,
        ("torch", "device"): torch.device,
        ("builtins", "set"): builtins.set,
        ("builtins", "frozenset"): builtins.frozenset,
        ("builtins", "slice"): builtins.slice,
        ("builtins", "complex"): builtins.complex,
    }
    for name in ("_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_parameter_with_state"):
        if hasattr(torch._utils, name):
            allowed[("torch._utils", name)] = getattr(torch._utils, name)
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if isinstance(obj, torch.dtype):
            allowed[("torch", name)] = obj
        elif name.endswith("Storage") and isinstance(obj, type):  # legacy typed storages (torch.FloatStorage)
            allowed[("torch", name)] = obj
    return allowed


_ALLOWED = _allowed()


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that imports nothing: allow-listed globals or placeholders."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placeholders: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        obj = _ALLOWED.get((module, name))
        if obj is not None:
            return obj
        qualname = f"{module}.{name}"
        _SEEN.add(qualname)
        return _placeholder_class(qualname)


_SEEN: set[str] = set()  # globals replaced by the last `restricted_load` (single-threaded use)


def _pickle_module() -> types.ModuleType:
    """A module object with pickle's interface whose unpickler is restricted (for torch.load)."""
    mod = types.ModuleType("convnext_restricted_pickle")
    mod.Unpickler = RestrictedUnpickler
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load()
    mod.UnpicklingError = pickle.UnpicklingError
    return mod


def restricted_load(path: str | os.PathLike) -> tuple[Any, list[str]]:
    """(object, names of the globals replaced by placeholders) of a torch.save / pickle file, read
    without importing or calling anything outside the allow-list."""
    _SEEN.clear()
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_pickle_module())
    return obj, sorted(_SEEN)


def placeholder_names(obj: Any, limit: int = 10_000) -> set[str]:
    """Qualnames of the placeholders anywhere inside `obj` (dicts, lists, tuples), for checks."""
    out: set[str] = set()
    stack, seen = [obj], 0
    while stack and seen < limit:
        x = stack.pop()
        seen += 1
        if isinstance(x, Placeholder):
            out.add(x.qualname)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack.extend(x)
    return out
