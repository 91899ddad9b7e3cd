"""Detectors: fidelity to the paper (params, FLOPs), the data contract in train and eval, weights."""
import dataclasses

import pytest
import torch
from torch import nn

import convnext
from convnext.dense.detection import ConvNeXtDetector, create_detector
from convnext.errors import ConfigError
from convnext.models import config_from_dict, config_to_dict, count_flops, count_params, get_spec

PAPER = ["mask_rcnn_convnext_tiny"] + [f"cascade_mask_rcnn_convnext_{s}" for s in ("tiny", "small", "base", "large", "xlarge")]


@pytest.mark.parametrize("name", PAPER)
def test_params_and_flops_match_the_paper(name):
    spec = get_spec(name)
    assert spec.task == "detection" and spec.flops_size == (800, 1280)
    with torch.device("meta"):  # no memory, no compute, even for XL
        model = convnext.create_model(name, num_classes=80)
    assert count_params(model) / 1e6 == pytest.approx(spec.params_m, rel=0.02)
    assert count_flops(model, spec.flops_size) / 1e9 == pytest.approx(spec.ref_gmacs, rel=0.05)


def test_registry_names_and_settings():
    names = convnext.list_models("*mask_rcnn_*")
    for b in ("atto", "tiny", "xlarge"):
        assert f"mask_rcnn_convnext_{b}" in names and f"cascade_mask_rcnn_convnext_{b}" in names
    assert "cascade_mask_rcnn_convnextv2_base" in names
    assert [get_spec(f"cascade_mask_rcnn_convnext_{s}").config.drop_path_rate
            for s in ("tiny", "small", "base", "large", "xlarge")] == [0.4, 0.6, 0.7, 0.7, 0.8]
    assert get_spec("mask_rcnn_convnext_tiny").config.drop_path_rate == 0.4


def test_cascade_structure():
    with torch.device("meta"):
        model = convnext.create_model("cascade_mask_rcnn_convnext_tiny", num_classes=80)
    rh = model.roi_heads
    assert rh.num_stages == 3 and rh.stage_weights == (1.0, 0.5, 0.25)
    assert [m.high_threshold for m in rh.matchers] == [0.5, 0.6, 0.7]
    assert [c.weights for c in rh.coders][2] == pytest.approx((1 / 0.033, 1 / 0.033, 1 / 0.067, 1 / 0.067))
    assert rh.box_heads[0].bbox_pred.out_features == 320 and rh.box_heads[0].cls_score.out_features == 81
    assert len(rh.box_heads[1].convs) == 4 and len(rh.box_heads[1].fcs) == 1
    # BN in the box heads becomes the official SyncBN by the standard conversion
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(model.roi_heads)
    assert sum(isinstance(m, nn.SyncBatchNorm) for m in synced.modules()) == 12
    assert model.backbone.config.stage_norms and model.backbone.config.layer_scale_init_value == 1.0
    assert model.rpn._post_nms_top_n["training"] == 2000
    with torch.device("meta"):
        mrcnn = convnext.create_model("mask_rcnn_convnext_tiny", num_classes=80)
    assert mrcnn.rpn._post_nms_top_n["training"] == 1000 and mrcnn.roi_heads.num_stages == 1


def _batch():
    """Two 128x160 images: one with two boxes (+ masks), one with none."""
    g = torch.Generator().manual_seed(0)
    imgs = [torch.rand(3, 128, 160, generator=g) * 0.3 for _ in range(2)]
    boxes = torch.tensor([[10.0, 20.0, 70.0, 90.0], [80.0, 30.0, 150.0, 120.0]])
    masks = torch.zeros(2, 128, 160, dtype=torch.uint8)
    for j, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
        masks[j, y1:y2, x1:x2] = 1
        imgs[0][j, y1:y2, x1:x2] = 1.0  # object j is bright in channel j
    targets = [
        {"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "masks": torch.zeros(0, 128, 160, dtype=torch.uint8)},
    ]
    return imgs, targets


@pytest.mark.parametrize("name,opt", [
    ("mask_rcnn_convnext_atto", "sgd"),
    pytest.param("cascade_mask_rcnn_convnext_atto", "adamw", marks=pytest.mark.slow),  # ~20 s on 2 CPU cores
])
def test_train_steps_and_eval_contract(name, opt):
    torch.manual_seed(0)
    # smaller neck, RoI batch and test proposals than the paper's (256 channels, 512 RoIs, 1000) for CPU speed
    model = convnext.create_model(name, num_classes=3, fpn_channels=64, rois_per_image=64, rpn_post_nms_test=200)
    imgs, targets = _batch()
    params = [p for p in model.parameters() if p.requires_grad]
    optim = torch.optim.SGD(params, lr=0.01, momentum=0.9) if opt == "sgd" else torch.optim.AdamW(params, lr=1e-4)
    model.train()
    totals = []
    for _ in range(3):
        losses = model(imgs, targets)
        assert all(v.ndim == 0 and torch.isfinite(v) for v in losses.values())
        loss = sum(losses.values())
        optim.zero_grad()
        loss.backward()
        optim.step()
        totals.append(loss.item())
    stages = model.roi_heads.num_stages
    assert len(losses) == 2 + 3 * stages  # RPN objectness + box, then classifier / box / mask per stage
    assert totals[-1] < totals[0]

    model.eval()
    with torch.no_grad():
        out = model(imgs)
    assert len(out) == 2
    for det, img in zip(out, imgs):
        k = len(det["boxes"])
        assert k <= 100 and det["boxes"].shape == (k, 4) and det["scores"].shape == det["labels"].shape == (k,)
        assert det["masks"].shape == (k, 1, 128, 160) and det["masks"].dtype == torch.float32
        if k:
            assert det["scores"].min() >= 0.05 and det["labels"].min() >= 1 and det["labels"].max() <= 3
            assert 0 <= det["masks"].min() and det["masks"].max() <= 1
            assert (det["boxes"][:, 2:] <= torch.tensor([160.0, 128.0])).all() and (det["boxes"] >= 0).all()
            assert (det["scores"][:-1] >= det["scores"][1:]).all()  # sorted
    assert model.num_classes == 3 and model.config.num_classes == 3


def test_no_resize_inside_the_model():
    model = convnext.create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32).eval()
    batch, _ = model.transform([torch.rand(3, 100, 130), torch.rand(3, 64, 64)])
    assert batch.tensors.shape == (2, 3, 128, 160)  # padded to multiples of 32, not resized
    assert batch.image_sizes == [(100, 130), (64, 64)]
    x = torch.ones(3, 32, 32)
    y, _ = model.transform([x])
    assert y.tensors[0, 0, 0, 0].item() == pytest.approx((1 - 0.485) / 0.229)  # ImageNet normalisation of [0, 1]


def test_config_round_trip_and_grad_checkpointing():
    model = convnext.create_model("cascade_mask_rcnn_convnext_atto", num_classes=5, fpn_channels=32)
    d = config_to_dict(model.config)
    assert d["arch"] == "detection" and d["backbone"] == "convnext_atto"
    assert config_from_dict(d) == model.config
    rebuilt = convnext.models.build_model(config_from_dict(d))
    assert rebuilt.state_dict().keys() == model.state_dict().keys()
    model.set_grad_checkpointing(True)
    assert model.backbone.grad_checkpointing
    with pytest.raises(ConfigError, match="target_stds"):
        dataclasses.replace(model.config, iou_thresholds=(0.5, 0.6))
    with pytest.raises(ConfigError, match="not a hierarchical ConvNeXt"):
        convnext.create_model("mask_rcnn_convnext_atto", backbone="convnext_isotropic_small")


def test_backbone_from_a_classification_checkpoint(tmp_path):
    cls = convnext.create_model("convnext_atto", num_classes=10)
    path = tmp_path / "atto.pth"
    torch.save({"model": cls.state_dict()}, path)
    model = create_detector("mask_rcnn_convnext_atto", num_classes=3, backbone_checkpoint=path, fpn_channels=32)
    report = model.backbone_load_report
    assert report.new == [f"stage_norms.{i}.{p}" for i in range(4) for p in ("bias", "weight")]
    assert set(report.dropped) == {"head.weight", "head.bias", "norm.weight", "norm.bias"}
    ours, theirs = model.backbone.state_dict(), cls.state_dict()
    assert torch.equal(ours["stages.2.3.pwconv1.weight"], theirs["stages.2.3.pwconv1.weight"])
    assert torch.equal(ours["stages.0.0.gamma"], theirs["stages.0.0.gamma"])  # 1e-6 from the file, not 1.0
    assert torch.equal(ours["stage_norms.1.weight"], torch.ones(80))
    assert isinstance(model, ConvNeXtDetector)
