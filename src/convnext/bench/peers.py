"""The implementations a benchmark compares: ours and the same variant from timm / torchvision.

Every peer is built with random weights, its layer-scale / GRN parameters are drawn away from
their near-zero init (so that a wrong block changes the logits visibly), and its state dict is
converted to the official layout and loaded strictly into our model: all implementations then
hold *identical* weights and must produce the same outputs.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch
from torch import nn

from ..models import create_model
from ..weights import convert_state_dict
from .options import PEERS

__all__ = ["PEERS", "Implementation", "build_implementations"]

# Our registry name -> the peer library's name for the same architecture.
_TIMM_NAMES = {
    **{f"convnext_{s}": f"convnext_{s}" for s in
       ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large", "xlarge")},
    **{f"convnextv2_{s}": f"convnextv2_{s}" for s in
       ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")},
}
_TORCHVISION_NAMES = {f"convnext_{s}": f"convnext_{s}" for s in ("tiny", "small", "base", "large")}



@dataclass
class Implementation:
    name: str  # "ours", "timm", "torchvision"
    model: nn.Module
    source: str  # e.g. "timm.create_model('convnext_tiny')"


def _timm_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    import timm

    return timm.create_model(_TIMM_NAMES[name], pretrained=False, num_classes=num_classes), \
        f"timm {timm.__version__}: timm.create_model({_TIMM_NAMES[name]!r})"


def _torchvision_model(name: str, num_classes: int) -> tuple[nn.Module, str]:
    import torchvision

    fn = getattr(torchvision.models, _TORCHVISION_NAMES[name])
    return fn(weights=None, num_classes=num_classes), \
        f"torchvision {torchvision.__version__}: torchvision.models.{_TORCHVISION_NAMES[name]}()"


_BUILDERS = {"timm": (_TIMM_NAMES, _timm_model), "torchvision": (_TORCHVISION_NAMES, _torchvision_model)}


@torch.no_grad()
def _spread_scales(model: nn.Module, generator: torch.Generator) -> None:
    """Draw layer scale (init 1e-6) and GRN (init 0) parameters from U(0.1, 1).

    At their init values every block is almost the identity, and a comparison of logits would
    not notice a broken block; trained checkpoints have scales of this order.
    """
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("gamma", "layer_scale") or ".grn." in name or leaf in ("grn_gamma", "grn_beta"):
            p.copy_(torch.empty(p.shape).uniform_(0.1, 1.0, generator=generator))


def build_implementations(
    model_name: str,
    peers: list[str],
    *,
    num_classes: int = 1000,
    seed: int = 0,
) -> tuple[list[Implementation], dict[str, str]]:
    """Ours plus each available peer, all with the same (random) weights.

    Returns the implementations (ours first) and, per requested peer that could not be built,
    the reason it was skipped (library not installed, or variant not in that library).
    """
    skipped: dict[str, str] = {}
    built: list[Implementation] = []
    generator = torch.Generator().manual_seed(seed)
    for peer in peers:
        names, builder = _BUILDERS[peer]
        if model_name not in names:
            skipped[peer] = f"{peer} has no implementation of {model_name}"
            continue
        try:
            importlib.import_module(peer)
        except ImportError:
            skipped[peer] = f"{peer} is not installed (pip install {peer})"
            continue
        torch.manual_seed(seed)
        model, source = builder(model_name, num_classes)
        _spread_scales(model, generator)
        built.append(Implementation(peer, model.eval(), source))

    ours = create_model(model_name, num_classes=num_classes).eval()
    if built:
        # Ours takes the first peer's weights; every peer then holds the same numbers.
        reference = built[0].model.state_dict()
        ours.load_state_dict(convert_state_dict(reference, dst="official"), strict=True)
        for impl in built[1:]:
            impl.model.load_state_dict(convert_state_dict(ours.state_dict(), dst=impl.name), strict=True)
    else:
        torch.manual_seed(seed)
        _spread_scales(ours, generator)
    return [Implementation("ours", ours, f"convnext.create_model({model_name!r})"), *built], skipped
