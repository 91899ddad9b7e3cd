"""Optimizer parameter groups derived from the model's structure (STYLE.md principle 9).

* Weight decay: none on 1-D parameters (biases, LayerNorm affine, layer-scale gamma) nor on
  ConvNeXt-V2 GRN parameters (PAPER.md §3.3).
* Layer-wise lr decay (fine-tuning, PAPER.md §3.2): blocks are grouped in runs of 3 consecutive
  blocks *within each stage*; the stem is group 0, a downsampling layer joins the first group of
  the stage it feeds, and the final norm + head form the top group. Group g gets the lr multiplier
  decay ** (top - g). For depths (3, 3, 27, 3) this reproduces the official mapping exactly
  (stem 0, stage 1 -> 1, ds1 + stage 2 -> 2, ds2 + blocks 0-2 of stage 3 -> 3, block b -> 3 + b // 3,
  ds3 + stage 4 -> 12, head 13), and it extends to every other depth: ConvNeXt-T (3, 3, 9, 3) gets
  8 groups (as the official dense-task configs with num_layers=6), atto (2, 2, 6, 2) gets 7.
  The isotropic model is one stage: stem 0, block j -> 1 + j // 3, head on top.
"""
from __future__ import annotations

import math

from torch import nn

__all__ = ["BLOCKS_PER_GROUP", "layer_groups", "layer_id", "num_layer_groups", "param_groups", "no_weight_decay"]

BLOCKS_PER_GROUP = 3  # "groups of 3 consecutive blocks" (paper §A.2)


def _stage_depths(model: nn.Module) -> tuple[int, ...]:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "depths"):
        return tuple(config.depths)
    if config is not None and hasattr(config, "depth"):  # isotropic: a single stage
        return (config.depth,)
    raise ValueError(
        f"layer-wise lr decay needs a ConvNeXt-style model (config with `depths` or `depth`); "
        f"{type(model).__name__} has neither"
    )


def layer_groups(depths: tuple[int, ...]) -> list[int]:
    """First group id of every stage: stage i's blocks occupy ceil(depth_i / 3) consecutive groups after the stem."""
    firsts, g = [], 1
    for d in depths:
        firsts.append(g)
        g += math.ceil(d / BLOCKS_PER_GROUP)
    return firsts


def num_layer_groups(model: nn.Module) -> int:
    """Number of lr groups including stem (id 0) and head (the top id)."""
    depths = _stage_depths(model)
    return layer_groups(depths)[-1] + math.ceil(depths[-1] / BLOCKS_PER_GROUP) + 1


def layer_id(name: str, model: nn.Module) -> int:
    """Layer-decay group of parameter `name` (a key of `model.named_parameters()`)."""
    depths = _stage_depths(model)
    firsts = layer_groups(depths)
    top = num_layer_groups(model) - 1
    parts = name.split(".")
    if parts[0] == "stem" or (parts[0] == "downsample_layers" and parts[1] == "0"):
        return 0
    if parts[0] == "downsample_layers":  # joins the first group of the stage it feeds
        return firsts[int(parts[1])]
    if parts[0] == "stages":
        return firsts[int(parts[1])] + int(parts[2]) // BLOCKS_PER_GROUP
    if parts[0] == "blocks":  # isotropic
        return firsts[0] + int(parts[1]) // BLOCKS_PER_GROUP
    if parts[0] == "stage_norms":  # dense-backbone output norms sit with the stage's last blocks
        i = int(parts[1])
        return firsts[i] + (depths[i] - 1) // BLOCKS_PER_GROUP
    return top  # final norm, head


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norm weights and layer-scale gamma (all 1-D) and GRN parameters are not decayed."""
    return param.ndim <= 1 or name.endswith(".bias") or ".grn." in name


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """AdamW parameter groups; each group carries `lr_scale` (multiplied into the scheduled lr).

    Args:
        model: the unwrapped model (parameter names as in its state dict).
        weight_decay: decay for weight matrices / conv kernels.
        layer_decay: layer-wise lr decay factor, or None for a single lr.
    """
    top = num_layer_groups(model) - 1 if layer_decay is not None else 0
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        gid = layer_id(name, model) if layer_decay is not None else 0
        decay = not no_weight_decay(name, p)
        key = (gid, decay)
        if key not in groups:
            groups[key] = {
                "params": [], "names": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": layer_decay ** (top - gid) if layer_decay is not None else 1.0,
                "layer_id": gid,
            }
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return [groups[k] for k in sorted(groups)]
