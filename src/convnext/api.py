"""The top-level Python API: build a model with its weights, load any checkpoint, predict.

    model = convnext.create_model("convnext_tiny", pretrained=True)    # build + official weights
    loaded = convnext.load("runs/x/checkpoint-best.pt")                # any task: model, transform, classes
    convnext.predict(loaded, ["cat.jpg", "dog.png"], topk=3)           # [[("cat", 0.91), ...], [...]]

`create_model` composes the two floors below it: `convnext.models.create_model` builds, and
`convnext.weights` loads (models/ never imports weights/). `load`, `predict` and the rest of using
a trained model live in `convnext.inference` and are re-exported here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .inference.images import expand_image_args, open_image
from .inference.loaded import Loaded, load
from .inference.predict import iter_predictions, predict

__all__ = ["Loaded", "create_model", "load", "predict", "iter_predictions", "open_image", "expand_image_args"]


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    pretrained: bool | str = False,
    checkpoint: str | Path | None = None,
    drop_path_rate: float | None = None,
    reinit_head: bool = False,
    **overrides: Any,
):
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
    from .models import create_model as build

    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=... or checkpoint=..., not both")
    model = build(name, num_classes=num_classes, drop_path_rate=drop_path_rate, **overrides)
    if pretrained:
        from .weights import load_pretrained

        load_pretrained(model, name, tag=None if pretrained is True else str(pretrained), reinit_head=reinit_head)
    elif checkpoint is not None:
        from .weights import load_checkpoint

        load_checkpoint(model, checkpoint, reinit_head=reinit_head)
    return model
