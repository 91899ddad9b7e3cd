"""Layer-wise learning-rate decay ids of the official dense-task code (PAPER.md §4.1, §6 items 7-8).

The official `LearningRateDecayOptimizerConstructor` (ConvNeXt `object_detection/` and
`semantic_segmentation/mmcv_custom/`) gives every parameter an id from its name, and the lr
multiplier decay ** (num_layers + 1 - id): the top id, num_layers + 1, trains at the base lr.
Our dense models name their backbone `backbone` with the official sub-names
(`downsample_layers.i`, `stages.i.j`), so the same rules read our names.

layer-wise (detection; num_layers 6 for T, 12 for S/B/L/XL):
    stem (downsample_layers.0) 0; stage 1 blocks 1; downsample 1 + stage 2 2; downsample 2 3;
    stage 3 block b 3 + b // 3; downsample 3 + stage 4 num_layers; everything else num_layers + 1
stage-wise (segmentation): every downsampling layer 0; stage k (0-based) k + 1; everything else num_layers + 1.

"Everything else" includes the backbone's per-stage output LayerNorms (official `backbone.norm{i}`,
our `backbone.stage_norms.{i}`): the official rules match no prefix for them, so they train at lr x1.
"""
from __future__ import annotations

__all__ = ["detection_layer_id", "stage_wise_layer_id", "lr_scale"]


def _backbone_part(name: str) -> tuple[str, int, int] | None:
    """("downsample_layers" | "stages", stage, block or -1) for a backbone body parameter, else None."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "backbone" and parts[1] in ("downsample_layers", "stages"):
        block = int(parts[3]) if parts[1] == "stages" and len(parts) > 3 and parts[3].isdigit() else -1
        return parts[1], int(parts[2]), block
    return None


def detection_layer_id(param_name: str, num_layers: int) -> int:
    """Layer-wise decay id of a detector parameter (official `get_num_layer_layer_wise`)."""
    part = _backbone_part(param_name)
    if part is None:
        return num_layers + 1  # neck, heads, stage norms: base lr
    kind, stage, block = part
    if stage == 3:
        return num_layers
    if kind == "downsample_layers":
        return (0, 2, 3)[stage]  # the stem, then each downsampling layer with the stage it feeds
    return (1, 2)[stage] if stage < 2 else 3 + block // 3


def stage_wise_layer_id(param_name: str, num_layers: int) -> int:
    """Stage-wise decay id of a segmentation parameter (official `get_num_layer_stage_wise`)."""
    part = _backbone_part(param_name)
    if part is None:
        return num_layers + 1
    kind, stage, _ = part
    return 0 if kind == "downsample_layers" else stage + 1


def lr_scale(layer_id: int, num_layers: int, decay: float) -> float:
    """The official multiplier decay ** (num_layers + 1 - id) (the top id gets 1)."""
    return decay ** (num_layers + 1 - layer_id)
