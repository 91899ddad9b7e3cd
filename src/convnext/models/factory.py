"""`create_model`: the one builder between names/checkpoints and `nn.Module`."""
from __future__ import annotations

import dataclasses
from pathlib import Path

from torch import nn

from .registry import build_model, get_spec

__all__ = ["create_model"]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: bool | str = False,
    checkpoint: str | Path | None = None,
    drop_path_rate: float | None = None,
    reinit_head: bool = False,
    **overrides,
) -> nn.Module:
    """Build a registered model, optionally loading weights.

    Args:
        name: a name from `list_models()`.
        num_classes: classifier width (0 removes the head).
        pretrained: True for the registry's default checkpoint of `name`, or a checkpoint tag
            (see `convnext.weights.list_pretrained(name)`); downloads through torch's hub cache.
        checkpoint: path of a local checkpoint in any supported layout (official, timm,
            torchvision, HF transformers, ConvNeXt-V2; .pt/.pth/.bin or .safetensors).
        drop_path_rate: stochastic depth of the last block (None keeps the config's value).
        reinit_head: allow a checkpoint whose head has a different number of classes; the head
            is then freshly initialised (scaled by `head_init_scale`). Without it a mismatch is an error.
        **overrides: any other field of the model's config dataclass (e.g. `layer_scale_init_value`,
            `head_init_scale`, `stem_patch_size`, `in_chans`).
    """
    spec = get_spec(name)
    fields = {f.name for f in dataclasses.fields(spec.config)}
    unknown = set(overrides) - fields
    if unknown:
        raise TypeError(f"create_model({name!r}): unknown config override(s) {sorted(unknown)}; valid: {sorted(fields)}")
    changes = dict(overrides, num_classes=num_classes)
    if drop_path_rate is not None:
        changes["drop_path_rate"] = drop_path_rate
    config = dataclasses.replace(spec.config, **changes)
    model = build_model(config)
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=... or checkpoint=..., not both")
    if pretrained:
        from ..weights import load_pretrained

        load_pretrained(model, name, tag=None if pretrained is True else str(pretrained), reinit_head=reinit_head)
    elif checkpoint is not None:
        from ..weights import load_checkpoint

        load_checkpoint(model, checkpoint, reinit_head=reinit_head)
    return model
