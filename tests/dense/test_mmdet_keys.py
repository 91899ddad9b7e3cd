"""mmdet ConvNeXt detector checkpoints (Mask R-CNN, Cascade Mask R-CNN) in both backbone namings ->
our detectors; the synthetic files' key names are written out in `openmmlab_files.py` from mmdet's,
mmpretrain's and FAIR's sources."""
import pytest
import torch

import convnext
from convnext.dense.mmdet_keys import from_mmdet, load_mmdet_checkpoint, mmdet_layout, to_mmdet
from convnext.errors import CheckpointError
from convnext.weights.dense_files import read_dense_file

from openmmlab_files import mmdet_state_dict, save_runner_checkpoint

FPN = 64  # the official width is 256; names do not depend on it and 64 keeps the test small
C = 3  # object classes


def detector(name, **kw):
    return convnext.models.create_model(name, num_classes=C, fpn_channels=FPN, **kw)


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
@pytest.mark.parametrize("cascade", [False, True])
def test_whole_checkpoint_loads_strictly_and_round_trips(cascade, naming, tmp_path):
    sd = mmdet_state_dict(cascade, naming)
    assert mmdet_layout(sd) == ("cascade" if cascade else "standard")
    path = tmp_path / "det.pth"
    torch.save({"state_dict": sd, "meta": {"CLASSES": ["a", "b", "c"]}}, path)
    model = detector("cascade_mask_rcnn_convnext_atto" if cascade else "mask_rcnn_convnext_atto")
    meta = load_mmdet_checkpoint(model, path)
    assert meta["CLASSES"] == ["a", "b", "c"]
    ours = model.state_dict()
    last = "2." if cascade else ""
    dw, pw1 = ("depthwise_conv", "pointwise_conv1") if naming == "openmmlab" else ("dwconv", "pwconv1")
    assert torch.equal(ours["backbone.stages.2.5.dwconv.weight"], sd[f"backbone.stages.2.5.{dw}.weight"])
    assert torch.equal(ours["backbone.stages.2.5.pwconv1.weight"], sd[f"backbone.stages.2.5.{pw1}.weight"])
    assert torch.equal(ours["backbone.stages.3.1.gamma"], sd["backbone.stages.3.1.gamma"])
    assert torch.equal(ours["backbone.stage_norms.2.weight"], sd["backbone.norm2.weight"])
    assert torch.equal(ours["backbone.downsample_layers.2.1.weight"], sd["backbone.downsample_layers.2.1.weight"])
    assert torch.equal(ours["neck.layer_blocks.3.0.weight"], sd["neck.fpn_convs.3.conv.weight"])
    assert torch.equal(ours["rpn.head.bbox_pred.weight"], sd["rpn_head.rpn_reg.weight"])
    stage = "2" if cascade else "0"
    fc_cls = sd[f"roi_head.bbox_head.{last}fc_cls.weight"]
    assert torch.equal(ours[f"roi_heads.box_heads.{stage}.cls_score.weight"][0], fc_cls[-1])  # background
    assert torch.equal(ours[f"roi_heads.box_heads.{stage}.cls_score.weight"][1:], fc_cls[:-1])
    assert torch.equal(ours[f"roi_heads.mask_heads.{stage}.logits.weight"],
                       sd[f"roi_head.mask_head.{last}conv_logits.weight"])
    if cascade:
        assert torch.equal(ours["roi_heads.box_heads.1.convs.3.bn.running_var"],
                           sd["roi_head.bbox_head.1.shared_convs.3.bn.running_var"])
    # and back: the same tensors under the same mmdet names, bit for bit
    back = to_mmdet(ours, "cascade" if cascade else "standard", naming=naming)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


@pytest.mark.parametrize("cascade", [False, True])
def test_both_namings_give_the_same_detector(cascade):
    name = "cascade_mask_rcnn_convnext_atto" if cascade else "mask_rcnn_convnext_atto"
    a, b = detector(name), detector(name)
    a.load_state_dict(from_mmdet(mmdet_state_dict(cascade, "openmmlab", seed=3)))
    b.load_state_dict(from_mmdet(mmdet_state_dict(cascade, "fair", seed=3)))
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(1, 3, 64, 96)
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a.backbone(x)["3"], b.backbone(x)["3"])


def test_v2_backbone_in_openmmlab_naming():
    sd = mmdet_state_dict(False, "openmmlab", v2=True)
    assert sd["backbone.stages.0.0.grn.gamma"].shape == (160,)  # mmpretrain GRN: (C,)
    model = detector("mask_rcnn_convnextv2_atto")
    model.load_state_dict(from_mmdet(sd))
    assert torch.equal(model.backbone.stages[0][0].grn.gamma.reshape(-1), sd["backbone.stages.0.0.grn.gamma"])
    back = to_mmdet(model.state_dict(), "standard")
    assert all(torch.equal(back[k], sd[k]) for k in sd) and back.keys() == sd.keys()
    assert read_dense_file({"state_dict": sd}).model_name == "mask_rcnn_convnextv2_atto"


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
@pytest.mark.parametrize("cascade", [False, True])
def test_read_dense_file_detects_everything_from_the_tensors(cascade, naming, tmp_path):
    path = tmp_path / "det.pth"
    meta = ({"dataset_meta": {"classes": ("cat", "dog", "cow")}} if naming == "openmmlab"  # mmdet 3 (mmengine)
            else {"CLASSES": ("cat", "dog", "cow")})  # mmdet 2 (mmcv 1.x)
    torch.save({"state_dict": mmdet_state_dict(cascade, naming), "meta": meta}, path)
    dense = read_dense_file(path)
    assert (dense.task, dense.family, dense.layout) == ("detection", "mmdet", naming)
    assert dense.model_name == ("cascade_mask_rcnn_convnext_atto" if cascade else "mask_rcnn_convnext_atto")
    assert dense.num_classes == C and dense.classes == ["cat", "dog", "cow"]
    assert dense.overrides == {"fpn_channels": FPN}
    said = "OpenMMLab" if naming == "openmmlab" else "FAIR"
    assert dense.describe().startswith(f"read mmdet checkpoint ({said} naming)")
    model = detector(dense.model_name)
    model.load_state_dict(dense.state_dict, strict=True)


def test_architecture_not_readable_says_pass_model(tmp_path):
    sd = mmdet_state_dict(False, "openmmlab", arch=((1, 1, 2, 1), (8, 16, 32, 64)))  # no registered backbone
    with pytest.raises(CheckpointError, match="pass --model NAME"):
        read_dense_file({"state_dict": sd})
    assert read_dense_file({"state_dict": sd}, model_name="mask_rcnn_mine").model_name == "mask_rcnn_mine"
    assert read_dense_file({"state_dict": {"head.weight": torch.zeros(2, 2)}}) is None  # not a dense file
    with pytest.raises(CheckpointError, match="--model upernet_convnext_atto is not a Mask R-CNN"):
        read_dense_file({"state_dict": mmdet_state_dict(False, "fair")}, model_name="upernet_convnext_atto")


def test_mmdet3_runner_checkpoint_loads_and_runs_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "epoch_36.pth"
    save_runner_checkpoint(path, mmdet_state_dict(True, "openmmlab"), ["a", "b", "c"], marker)
    model = detector("cascade_mask_rcnn_convnext_atto")
    meta = load_mmdet_checkpoint(model, path)
    assert meta["dataset_meta"]["classes"] == ("a", "b", "c")
    assert "inert placeholders" in capsys.readouterr().err
    assert read_dense_file(path).classes == ["a", "b", "c"]
    assert not marker.exists()


def test_unmatched_and_missing_keys_are_named():
    sd = mmdet_state_dict(False, "openmmlab")
    sd["roi_head.bbox_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"roi_head\.bbox_head\.extra\.weight"):
        from_mmdet(sd)
    del sd["roi_head.bbox_head.extra.weight"], sd["neck.fpn_convs.1.conv.bias"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): neck\.layer_blocks\.1\.0\.bias"):
        load_mmdet_checkpoint(detector("mask_rcnn_convnext_atto"), sd)


def test_wrong_detector_is_refused():
    with pytest.raises(CheckpointError, match="does not fit this ConvNeXtDetector"):
        load_mmdet_checkpoint(detector("cascade_mask_rcnn_convnext_atto"), mmdet_state_dict(False, "fair"))
    with pytest.raises(CheckpointError, match="not an mmdet"):
        from_mmdet({"downsample_layers.0.0.weight": torch.zeros(1)})


@pytest.mark.slow
@pytest.mark.parametrize("cascade, params", [(False, 48_095_376), (True, 85_930_578)])
def test_tiny_files_of_the_official_size_load_into_the_registered_model(cascade, params):
    # mmdet 3.3 counts Mask R-CNN-T 48,095,376 and Cascade-T 85,930,578 parameters (issue 14's peer run).
    sd = mmdet_state_dict(cascade, "openmmlab", fpn=256, classes=80, arch=((3, 3, 9, 3), (96, 192, 384, 768)))
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(buffers)) == params
    dense = read_dense_file({"state_dict": sd})
    assert dense.model_name == ("cascade_mask_rcnn_convnext_tiny" if cascade else "mask_rcnn_convnext_tiny")
    model = convnext.models.create_model(dense.model_name, num_classes=dense.num_classes)
    model.load_state_dict(dense.state_dict, strict=True)
    assert convnext.count_params(model) == params
