"""Where commands write, and what they print: the CLI's output helpers (a low module, torch-free).

- `check_output_path`: refuse, before any work, to write where it would destroy a file the
  command did not create (unless `--force`), into a directory given as a file, under a file,
  or into a folder that is not writable.
- `output_names`: one output file per input image inside a folder, without collisions
  (`x/photo.jpg` and `y/photo.jpg` keep their relative paths).
- `printable`: text from files (class names, paths) escaped before it reaches a terminal.
- `chance_note`: a line for a top-1 that is no better than guessing (a checkpoint run at another
  resolution, or on folders in another class order), printed by `eval` and the int8 export.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from .errors import CheckpointError, UserError

__all__ = ["check_output_path", "check_output_file", "output_names", "printable", "chance_note"]


def check_output_path(path: str | os.PathLike, flag: str, *, force: bool = False, directory: bool = False) -> Path:
    """`path` as an output the command may write, or a CheckpointError naming `flag` before any work.

    Refused: an existing file without `force`; a directory where a file is written (or, with
    `directory`, an existing non-empty folder without `force`); a path under a file; a folder we
    cannot write to.
    """
    p = Path(path).expanduser()
    if p.is_dir() and not directory:
        raise CheckpointError(f"{flag} {p}: is a directory; expected a file path")
    if p.exists() and not p.is_dir() and directory:
        raise CheckpointError(f"{flag} {p}: is a file; expected a directory path")
    if p.exists() and not force and (not p.is_dir() or any(p.iterdir())):
        raise CheckpointError(f"{flag} {p}: already exists; pass --force to overwrite it")
    parent = p.parent
    while not parent.exists():  # the first folder that exists must be a writable folder
        parent = parent.parent
    if not parent.is_dir():
        raise CheckpointError(f"{flag} {p}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"{flag} {p}: folder {parent} is not writable")
    return p


def check_output_file(path: str | os.PathLike, flag: str, suffixes: Sequence[str], *, force: bool = False,
                      hint: str = "") -> Path:
    """`check_output_path` for a file of one of `suffixes` (".png", ".json"): a path without
    an extension, or with another one (a `.pt` checkpoint given as `--output`), is refused by name;
    `hint` (" (a folder for several images)") ends that message."""
    p = Path(path).expanduser()
    if p.suffix.lower() not in suffixes:
        what = f"has no extension" if not p.suffix else f"is a {p.suffix} file"
        raise UserError(f"{flag} {p}: {what}; expected {' or '.join(suffixes)}{hint}")
    return check_output_path(p, flag, force=force)


def output_names(inputs: Sequence[str | os.PathLike], suffix: str) -> list[str]:
    """Relative output file names, one per input, distinct: the inputs' paths relative to their
    common folder with `suffix` (`x/photo.jpg`, `y/photo.jpg` -> `x/photo.png`, `y/photo.png`).

    Inputs sharing a path but for the extension (`a.jpg`, `a.png`) keep it in the name (`a.jpg.png`).
    """
    paths = [Path(os.path.abspath(p)) for p in inputs]
    if not paths:
        return []
    common = Path(os.path.commonpath([str(p.parent) for p in paths]))
    rel = [p.relative_to(common) for p in paths]
    stems = [str(r.with_suffix("")) for r in rel]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    names = [(str(r) if counts[s] > 1 else s) + suffix for r, s in zip(rel, stems)]
    seen: dict[str, int] = {}
    out = []
    for n in names:  # the same file given twice: numbered
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else f"{n[: -len(suffix)]}-{k}{suffix}")
    return out


def printable(text: Any) -> str:
    """`text` safe to print: control and other non-printable characters escaped (`\\x1b`, `\\n`).

    Class names come from checkpoint files; printed raw, a crafted name could clear the terminal or
    forge extra result lines.
    """
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(text))


def chance_note(top1: float, classes: int, images: int, img_size: int | None = None, what: str = "top-1") -> str | None:
    """A note when `top1` (percent, on `images` labelled images of `classes` classes) is within guessing's reach,
    else None. Guessing scores 100 / classes; "within reach" is at most 1.5x that plus two binomial standard
    deviations of a guess's score on `images` images. Tasks of fewer than 5 classes get no note (an honest weak
    model of 2-4 classes can score near guessing). `what` names the figure ("fp32 top-1")."""
    if classes < 5 or images < 1:
        return None
    p = 1.0 / classes
    if top1 > 100 * (1.5 * p + 2 * (p * (1 - p) / images) ** 0.5):
        return None
    size = f"resolution {img_size}px here, --img-size to change it; " if img_size else ""
    return (f"note: {what} {top1:.2f}% is near chance ({100 * p:.1f}% for {classes} classes): check that the images "
            f"match the checkpoint ({size}class folders in its class order)")
