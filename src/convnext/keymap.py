"""Key maps: declarative tables of how another implementation names the tensors of our models.

The one engine behind every conversion (weights/convert.py: timm, torchvision, HF, dense backbones;
weights/dense_files.py: mmdet, mmseg; models/roadmap.py: torchvision ResNet). It sits below
`models/` (it needs only torch) so every layer can declare a map without importing upward.

A `Rule(ours, theirs, fix)` is two key templates and, where the tensor is stored with another
shape, a shape fix `fix(tensor, to_ours, opts)`. A `KeyMap` is an ordered tuple of rules, read in
both directions; the first rule whose template matches wins, so specific rules come first.

Template placeholders: any single letter is an index (`{s}` stage, `{b}` block, `{i}` ...), `{p}`
weight|bias, `{q}` a norm layer's tensors (weight|bias|running_mean|running_var|num_batches_tracked),
and affine index expressions such as `{s*2+1}` or `{s+1}` (solved both ways). A variable used twice
in one template must take the same value.
"""
from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import torch

from .errors import CheckpointError

__all__ = ["Fix", "Rule", "KeyMap", "translate_state_dict", "summarize_keys"]

# A shape fix: (tensor, to_ours, options) -> tensor.
Fix = Callable[[torch.Tensor, bool, dict], torch.Tensor]


@dataclass(frozen=True)
class Rule:
    ours: str
    theirs: str
    fix: Fix | None = None


_PLACEHOLDER = re.compile(r"\{(\w)(?:\*(\d+))?(?:\+(\d+))?\}")
_WORDS = {"p": "(weight|bias)", "q": "(weight|bias|running_mean|running_var|num_batches_tracked)"}


class _Template:
    """A key template compiled to a regex; `match` solves its placeholders, `format` fills them."""

    def __init__(self, text: str):
        self.text = text
        self.slots: list[tuple[str, int, int]] = []  # (variable, mul, add) per regex group
        pattern, pos = "", 0
        for m in _PLACEHOLDER.finditer(text):
            pattern += re.escape(text[pos:m.start()])
            var, mul, add = m.group(1), int(m.group(2) or 1), int(m.group(3) or 0)
            pattern += _WORDS.get(var, r"(\d+)")
            self.slots.append((var, mul, add))
            pos = m.end()
        self.regex = re.compile(pattern + re.escape(text[pos:]) + "$")

    def match(self, key: str) -> dict[str, str | int] | None:
        m = self.regex.match(key)
        if m is None:
            return None
        values: dict[str, str | int] = {}
        for (var, mul, add), raw in zip(self.slots, m.groups()):
            if var in _WORDS:
                value: str | int = raw
            else:
                n = int(raw) - add
                if n < 0 or n % mul:
                    return None  # e.g. an odd torchvision index cannot be a downsampling layer
                value = n // mul
            if values.setdefault(var, value) != value:  # a variable used twice must agree
                return None
        return values

    def format(self, values: Mapping[str, str | int]) -> str:
        def sub(m: re.Match) -> str:
            var, mul, add = m.group(1), int(m.group(2) or 1), int(m.group(3) or 0)
            return str(values[var]) if var in _WORDS else str(int(values[var]) * mul + add)

        return _PLACEHOLDER.sub(sub, self.text)


class KeyMap:
    """A layout's rule table, compiled once; `translate` maps one key in either direction.

    Rules are tried in order, first match wins (in both directions), so specific rules come first.
    """

    def __init__(self, name: str, rules: tuple[Rule, ...]):
        self.name = name
        self.rules = rules
        self._compiled = [(_Template(r.ours), _Template(r.theirs), r.fix) for r in rules]

    def translate(self, key: str, to_ours: bool) -> tuple[str, Fix | None] | None:
        """(translated key, shape fix or None), or None when no rule matches."""
        for ours, theirs, fix in self._compiled:
            src, dst = (theirs, ours) if to_ours else (ours, theirs)
            values = src.match(key)
            if values is not None:
                return dst.format(values), fix
        return None


def translate_state_dict(sd: Mapping[str, torch.Tensor], layout: KeyMap, *, to_ours: bool, opts: dict | None = None,
                         what: str = "tensor(s) have no counterpart") -> dict[str, torch.Tensor]:
    """Every key through `layout`'s rules (with their shape fixes); keys no rule matches are a
    CheckpointError "<n> <what>: <keys>". `to_ours` picks the direction."""
    return _translate(sd, layout, to_ours=to_ours, opts=opts or {}, what=what)


def _translate(sd: Mapping[str, torch.Tensor], layout: KeyMap, *, to_ours: bool, opts: dict,
               what: str) -> dict[str, torch.Tensor]:
    """Every key through `layout`'s rules (with their shape fixes); keys no rule matches are an error."""
    out, unmatched = {}, []
    for key, value in sd.items():
        hit = layout.translate(key, to_ours=to_ours)
        if hit is None:
            unmatched.append(key)
            continue
        new_key, fix = hit
        out[new_key] = fix(value, to_ours, opts) if fix else value
    if unmatched:
        raise CheckpointError(f"{len(unmatched)} {what}: {summarize_keys(unmatched, sep='; ')}")
    return out


def summarize_keys(keys: Iterable[str], limit: int = 8, sep: str = "\n") -> str:
    """Readable summary of many keys: indices folded to `*`, with counts, at most `limit` groups.

    One indented line per group by default; `sep="; "` gives one line (for CLI error messages).
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for k in keys:
        groups[re.sub(r"\.\d+(?=\.|$)", ".*", k)].append(k)
    items = [f"{pat}  ({len(ks)} tensors, e.g. {ks[0]})" if len(ks) > 1 else ks[0] for pat, ks in groups.items()]
    if len(items) > limit:
        items = items[:limit] + [f"... and {len(items) - limit} more groups"]
    return "\n".join("  " + i for i in items) if sep == "\n" else sep.join(items)
