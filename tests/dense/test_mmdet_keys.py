"""Official mmdet ConvNeXt detector checkpoints -> our detectors, with synthetic checkpoints whose key
names and shapes are written out here from the official configs (mask_rcnn_convnext_fpn.py,
cascade_mask_rcnn_convnext_fpn.py + the 4conv1fc heads of the ConvNeXt cascade configs)."""
import pytest
import torch

import convnext
from convnext.dense.mmdet_keys import from_mmdet, load_mmdet_checkpoint, mmdet_layout, to_mmdet
from convnext.errors import CheckpointError
from convnext.models import ConvNeXt, ConvNeXtConfig

FPN = 64  # the official width is 256; names do not depend on it and 64 keeps the test small
C = 3  # object classes


def mmdet_state_dict(cascade: bool, depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)) -> dict:
    g = torch.Generator().manual_seed(0)

    def t(*shape):
        return torch.randn(*shape, generator=g)

    body = ConvNeXt(ConvNeXtConfig(depths=depths, dims=dims, num_classes=0)).state_dict()
    sd = {f"backbone.{k}": t(*v.shape) for k, v in body.items() if not k.startswith("norm.")}
    for i, d in enumerate(dims):
        sd[f"backbone.norm{i}.weight"], sd[f"backbone.norm{i}.bias"] = t(d), t(d)
        sd[f"neck.lateral_convs.{i}.conv.weight"], sd[f"neck.lateral_convs.{i}.conv.bias"] = t(FPN, d, 1, 1), t(FPN)
        sd[f"neck.fpn_convs.{i}.conv.weight"], sd[f"neck.fpn_convs.{i}.conv.bias"] = t(FPN, FPN, 3, 3), t(FPN)
    sd.update({"rpn_head.rpn_conv.weight": t(FPN, FPN, 3, 3), "rpn_head.rpn_conv.bias": t(FPN),
               "rpn_head.rpn_cls.weight": t(3, FPN, 1, 1), "rpn_head.rpn_cls.bias": t(3),
               "rpn_head.rpn_reg.weight": t(12, FPN, 1, 1), "rpn_head.rpn_reg.bias": t(12)})
    for s in range(3) if cascade else [None]:
        box = "roi_head.bbox_head." + ("" if s is None else f"{s}.")
        mask = "roi_head.mask_head." + ("" if s is None else f"{s}.")
        if cascade:  # ConvFCBBoxHead, 4 shared convs (ConvModule conv + SyncBN "bn") and 1 shared fc
            for i in range(4):
                sd[f"{box}shared_convs.{i}.conv.weight"] = t(FPN, FPN, 3, 3)
                for p in ("weight", "bias", "running_mean"):
                    sd[f"{box}shared_convs.{i}.bn.{p}"] = t(FPN)
                sd[f"{box}shared_convs.{i}.bn.running_var"] = t(FPN).abs()
                sd[f"{box}shared_convs.{i}.bn.num_batches_tracked"] = torch.tensor(7)
            fcs = [(1024, FPN * 49)]
        else:  # Shared2FCBBoxHead
            fcs = [(1024, FPN * 49), (1024, 1024)]
        for i, (o, n) in enumerate(fcs):
            sd[f"{box}shared_fcs.{i}.weight"], sd[f"{box}shared_fcs.{i}.bias"] = t(o, n), t(o)
        sd[f"{box}fc_cls.weight"], sd[f"{box}fc_cls.bias"] = t(C + 1, 1024), t(C + 1)  # background last
        sd[f"{box}fc_reg.weight"], sd[f"{box}fc_reg.bias"] = t(4 * C, 1024), t(4 * C)  # class-specific
        for i in range(4):
            sd[f"{mask}convs.{i}.conv.weight"], sd[f"{mask}convs.{i}.conv.bias"] = t(FPN, FPN, 3, 3), t(FPN)
        sd[f"{mask}upsample.weight"], sd[f"{mask}upsample.bias"] = t(FPN, FPN, 2, 2), t(FPN)
        sd[f"{mask}conv_logits.weight"], sd[f"{mask}conv_logits.bias"] = t(C, FPN, 1, 1), t(C)
    return sd


def detector(name):
    return convnext.create_model(name, num_classes=C, fpn_channels=FPN)


@pytest.mark.parametrize("cascade", [False, True])
def test_whole_checkpoint_loads_strictly(cascade, tmp_path):
    sd = mmdet_state_dict(cascade)
    assert mmdet_layout(sd) == ("cascade" if cascade else "standard")
    path = tmp_path / "det.pth"
    torch.save({"state_dict": sd, "meta": {"CLASSES": ["a", "b", "c"]}}, path)
    model = detector("cascade_mask_rcnn_convnext_atto" if cascade else "mask_rcnn_convnext_atto")
    meta = load_mmdet_checkpoint(model, path)
    assert meta["CLASSES"] == ["a", "b", "c"]
    ours = model.state_dict()
    s, last = ("0.", "2.") if cascade else ("", "")
    assert torch.equal(ours["backbone.stage_norms.2.weight"], sd["backbone.norm2.weight"])
    assert torch.equal(ours["backbone.stages.2.5.pwconv1.weight"], sd["backbone.stages.2.5.pwconv1.weight"])
    assert torch.equal(ours["neck.layer_blocks.3.0.weight"], sd["neck.fpn_convs.3.conv.weight"])
    assert torch.equal(ours["rpn.head.bbox_pred.weight"], sd["rpn_head.rpn_reg.weight"])
    stage = "2" if cascade else "0"
    fc_cls = sd[f"roi_head.bbox_head.{last}fc_cls.weight"]
    assert torch.equal(ours[f"roi_heads.box_heads.{stage}.cls_score.weight"][0], fc_cls[-1])  # background
    assert torch.equal(ours[f"roi_heads.box_heads.{stage}.cls_score.weight"][1:], fc_cls[:-1])
    assert torch.equal(ours[f"roi_heads.mask_heads.{stage}.logits.weight"], sd[f"roi_head.mask_head.{last}conv_logits.weight"])
    if cascade:
        assert torch.equal(ours["roi_heads.box_heads.1.convs.3.bn.running_var"], sd["roi_head.bbox_head.1.shared_convs.3.bn.running_var"])
    # and back: the same tensors under the same mmdet names
    back = to_mmdet(ours, "cascade" if cascade else "standard")
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_unmatched_and_missing_keys_are_named():
    sd = mmdet_state_dict(False)
    sd["roi_head.bbox_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"roi_head\.bbox_head\.extra\.weight"):
        from_mmdet(sd)
    del sd["roi_head.bbox_head.extra.weight"], sd["neck.fpn_convs.1.conv.bias"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\): neck\.layer_blocks\.1\.0\.bias"):
        load_mmdet_checkpoint(detector("mask_rcnn_convnext_atto"), sd)


def test_wrong_detector_is_refused():
    with pytest.raises(CheckpointError, match="does not fit this ConvNeXtDetector"):
        load_mmdet_checkpoint(detector("cascade_mask_rcnn_convnext_atto"), mmdet_state_dict(False))
    with pytest.raises(CheckpointError, match="not an mmdet"):
        from_mmdet({"downsample_layers.0.0.weight": torch.zeros(1)})
