"""The project's error types, in one low-level module (imported by library code, never importing it).

Library code raises these; only the CLI (`convnext.cli.main`) turns them into one line,
`convnext <cmd>: error: <message>`, and exit status 2. Each message names the file or flag at fault
and what was expected.

- `UserError`: any error caused by the user's input (a path, a flag, a file's content).
- `ConfigError`: a training/eval option out of range or inconsistent (message starts with the flag).
- `DataError`: a dataset or image that cannot be used.
- `CheckpointError`: a weights file that cannot be read safely or does not fit the model.

The last three also subclass ValueError, so `except ValueError` in older callers keeps working.
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DataError", "CheckpointError"]


class UserError(Exception):
    """An error caused by the user's input (bad path, flag, file): printed without a traceback."""


class ConfigError(UserError, ValueError):
    """A configuration value out of its allowed range, or options that contradict each other."""


class DataError(UserError, ValueError):
    """A dataset folder, annotation file or image that cannot be used as given."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be read safely, or whose content does not fit the requested model."""
