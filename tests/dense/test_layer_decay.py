"""Layer-decay ids against the official rules, hand-computed for ConvNeXt-T (num_layers 6)."""
import pytest
import torch

import convnext
from convnext.dense.layer_decay import detection_layer_id, lr_scale, stage_wise_layer_id

# name -> (layer-wise id, stage-wise id) for ConvNeXt-T with num_layers = 6 (official T configs)
TINY = {
    "backbone.downsample_layers.0.0.weight": (0, 0),  # stem conv
    "backbone.downsample_layers.0.1.bias": (0, 0),  # stem LN
    "backbone.stages.0.2.gamma": (1, 1),
    "backbone.downsample_layers.1.1.weight": (2, 0),
    "backbone.stages.1.0.dwconv.weight": (2, 2),
    "backbone.downsample_layers.2.0.weight": (3, 0),
    "backbone.stages.2.0.pwconv1.weight": (3, 3),
    "backbone.stages.2.2.norm.weight": (3, 3),
    "backbone.stages.2.3.pwconv2.bias": (4, 3),
    "backbone.stages.2.8.gamma": (5, 3),
    "backbone.downsample_layers.3.1.weight": (6, 0),
    "backbone.stages.3.2.pwconv2.weight": (6, 4),
    "backbone.stage_norms.3.weight": (7, 7),  # official backbone.norm3: no rule matches -> top
    "neck.inner_blocks.0.0.weight": (7, 7),
    "rpn.head.conv.0.0.weight": (7, 7),
    "roi_heads.box_heads.0.fcs.0.weight": (7, 7),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_ids_convnext_tiny(name):
    layer_wise, stage_wise = TINY[name]
    assert detection_layer_id(name, 6) == layer_wise
    assert stage_wise_layer_id(name, 6) == stage_wise


def test_base_stage3_groups_of_three():
    # S/B/L/XL: 27 stage-3 blocks -> ids 3..11, stage 4 at num_layers 12, heads 13
    assert [detection_layer_id(f"backbone.stages.2.{b}.gamma", 12) for b in (0, 2, 3, 26)] == [3, 3, 4, 11]
    assert detection_layer_id("backbone.stages.3.0.gamma", 12) == 12
    assert detection_layer_id("roi_heads.mask_heads.2.logits.weight", 12) == 13


def test_lr_scale():
    assert lr_scale(7, 6, 0.7) == 1.0
    assert lr_scale(0, 6, 0.7) == pytest.approx(0.7 ** 7)
    assert lr_scale(6, 6, 0.95) == pytest.approx(0.95)


def test_every_detector_parameter_gets_an_id_in_range():
    with torch.device("meta"):
        model = convnext.create_model("mask_rcnn_convnext_tiny", num_classes=80)
    ids = {detection_layer_id(n, 6) for n, _ in model.named_parameters()}
    assert ids == set(range(8))  # 0..6 from the backbone, 7 for neck / heads / stage norms
