"""`create_model`: the one builder between registered names and `nn.Module` (weights: `convnext.weights`)."""
from __future__ import annotations

import dataclasses

from torch import nn

from .registry import build_model, get_spec

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    drop_path_rate: float | None = None,
    **overrides,
) -> nn.Module:
    """Build a registered model with freshly initialised weights (loading lives in `convnext.weights`;
    `convnext.create_model(name, checkpoint=..., pretrained=...)` builds and loads).

    Args:
        name: a name from `list_models()`.
        num_classes: classifier width (0 removes the head).
        drop_path_rate: stochastic depth of the last block (None keeps the config's value).
        **overrides: any other field of the model's config dataclass (e.g. `layer_scale_init_value`,
            `head_init_scale`, `stem_patch_size`, `in_chans`).
    """
    if {"checkpoint", "pretrained", "reinit_head"} & set(overrides):
        raise TypeError("convnext.models.create_model only builds a model; load weights with "
                        "convnext.create_model(name, checkpoint=... or pretrained=...)")
    spec = get_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"create_model({name!r}): unknown config override(s) {sorted(unknown)}; valid: {sorted(fields)}")
    changes = dict(overrides, num_classes=num_classes)
    if drop_path_rate is not None:
        changes["drop_path_rate"] = drop_path_rate
    return build_model(dataclasses.replace(spec.config, **changes))
