"""Lazy package attributes (PEP 562): a package names its public API without importing torch.

`import convnext` and the `convnext` command's parser stay fast (no torch import, which takes
seconds); a name's module is imported the first time the name is used.
"""
from __future__ import annotations

import importlib
import importlib.util
from typing import Any, Callable

__all__ = ["lazy_attributes"]


def lazy_attributes(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, resolving each of `names` (public name -> module path)."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:  # `convnext.models` after a bare `import convnext`, as when it was imported eagerly
            if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
