"""The project's error types, in one low-level module (imported by library code, never importing it).

Library code raises these; only the CLI (`convnext.cli.main`) turns them into one line,
`convnext <cmd>: error: <message>`, and exit status 2. Each message names the file or flag at fault
and what was expected.

- `UserError`: any error caused by the user's input (a path, a flag, a file's content).
- `ConfigError`: a training/eval option out of range or inconsistent (message starts with the flag).
- `DataError`: a dataset or image that cannot be used.
- `CheckpointError`: a weights file that cannot be read safely or does not fit the model.
- `UnknownModelError`: a model name that is not registered (also a `KeyError`, as lookups raised before).

The last three also subclass ValueError, so `except ValueError` in older callers keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError", "UnknownModelError"]


class UserError(Exception):
    """An error caused by the user's input (bad path, flag, file): printed without a traceback.

    Raised in a DataLoader worker, torch re-raises it in the main process as the same type built
    from "Caught X in DataLoader worker process N. Original Traceback ...": the message is then
    taken back from that text, so the one-line message survives the worker.
    """

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_worker_message(args[0], type(self)),)
        super().__init__(*args)


def _worker_message(text: str, cls: type) -> str:
    """The original message inside torch's worker re-raise text, else `text` unchanged."""
    if not (text.startswith("Caught ") and "\nOriginal Traceback" in text):
        return text
    for prefix in (f"{cls.__module__}.{cls.__qualname__}: ", f"{cls.__qualname__}: "):
        at = text.rfind("\n" + prefix)
        if at >= 0:
            return text[at + 1 + len(prefix):].rstrip("\n")
    return text


class ConfigError(UserError, ValueError):
    """A configuration value out of its allowed range, or options that contradict each other."""


class DataError(UserError, ValueError):
    """A dataset folder, annotation file or image that cannot be used as given."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read safely, or whose content does not fit the requested model."""


class UnknownModelError(ConfigError, KeyError):
    """A model name that is not in the registry; the message suggests close names.

    The one error for every lookup (`create_model`, `get_spec`, `--model`, `convnext flops NAME`).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
