"""mmseg UperNet checkpoints in both backbone namings <-> our UperNet, on synthetic checkpoints whose
key names are written out in `openmmlab_files.py` from mmseg's, mmpretrain's and FAIR's sources;
`convnext convert --to mmseg --layout`, `read_dense_file`, loading through `load_checkpoint` (what
`create_model(name, checkpoint=F)` calls) and the dense `--pretrained` registry."""
import pytest
import torch

import convnext
from convnext.cli import main
from convnext.dense.mmseg_keys import from_mmseg, load_mmseg_checkpoint, to_mmseg
from convnext.errors import CheckpointError
from convnext.weights import load_checkpoint, load_pretrained
from convnext.weights.dense_files import read_dense_file

from openmmlab_files import BLOCK_NAMES, mmdet_state_dict, mmseg_state_dict, save_runner_checkpoint

SMALL_HEAD = dict(channels=32, aux_channels=16)


def _model(seed=0, num_classes=7):
    torch.manual_seed(seed)
    return convnext.models.create_model("upernet_convnext_atto", num_classes=num_classes, **SMALL_HEAD).eval()


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
def test_exported_names_are_the_peers(naming):
    own = _model().state_dict()
    expected = set(mmseg_state_dict(naming))  # literal names from mmseg / mmpretrain / FAIR
    sd = to_mmseg(own, naming=naming)
    assert set(sd) == expected
    assert from_mmseg(sd).keys() == own.keys()
    block = BLOCK_NAMES[naming]
    assert any(k == f"backbone.stages.3.1.{block[0]}.weight" for k in sd)


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
def test_whole_file_loads_strictly_with_equal_logits(naming, tmp_path):
    sd = mmseg_state_dict(naming, seed=1)
    path = tmp_path / "upernet.pth"
    meta = ({"dataset_meta": {"classes": tuple("abcdefg")}} if naming == "openmmlab" else {"CLASSES": tuple("abcdefg")})
    torch.save({"meta": meta, "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)
    model = _model(2)
    got = load_mmseg_checkpoint(model, path)
    assert got == meta
    back = to_mmseg(model.state_dict(), naming=naming)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)  # bit for bit
    # the other naming of the same tensors gives the same network
    other = _model(3)
    flipped = "fair" if naming == "openmmlab" else "openmmlab"
    load_mmseg_checkpoint(other, {"state_dict": mmseg_state_dict(flipped, seed=1)})
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
def test_read_dense_file_and_load_checkpoint(naming, tmp_path, capsys):
    path = tmp_path / "seg.pth"
    torch.save({"state_dict": mmseg_state_dict(naming), "meta": {"CLASSES": list("abcdefg")}}, path)
    dense = read_dense_file(path)
    assert (dense.task, dense.family, dense.layout) == ("segmentation", "mmseg", naming)
    assert (dense.model_name, dense.num_classes, dense.classes) == ("upernet_convnext_atto", 7, list("abcdefg"))
    assert dense.overrides == SMALL_HEAD
    # create_model(name, checkpoint=F) loads through load_checkpoint: the whole UperNet, strictly
    model = _model(5)
    report = load_checkpoint(model, path)
    assert str(report).startswith(f"read mmseg checkpoint ({'OpenMMLab' if naming == 'openmmlab' else 'FAIR'} naming)")
    assert "loaded the whole model" in str(report)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in dense.state_dict.items())
    with pytest.raises(CheckpointError, match="is a UperNet checkpoint.*this model is a Mask R-CNN"):
        load_checkpoint(convnext.models.create_model("mask_rcnn_convnext_atto", num_classes=7), path)


def test_finetune_loads_a_whole_file_of_its_task_and_says_which(tmp_path):
    from convnext.dense.backbone import load_whole_dense

    seg, det = tmp_path / "seg.pth", tmp_path / "det.pth"
    torch.save({"state_dict": mmseg_state_dict("openmmlab")}, seg)
    torch.save({"state_dict": mmdet_state_dict(True, "fair")}, det)
    model = _model()
    line = load_whole_dense(model, seg, "segmentation")
    assert line == f"read mmseg checkpoint (OpenMMLab naming): loaded the whole model, 214 tensors from {seg}"
    assert load_whole_dense(model, det, "segmentation") is None  # another task: the caller loads the backbone


def test_backbone_only_and_classification_files_into_upernet(tmp_path):
    cls = convnext.models.create_model("convnext_atto")
    path = tmp_path / "cls.pth"
    torch.save({"model": cls.state_dict()}, path)
    model = _model()
    report = load_checkpoint(model, path)  # a classification file: the backbone only, said so
    assert str(report).startswith("backbone: loaded") and "stage_norms" in str(report)
    assert torch.equal(model.backbone.stages[1][0].dwconv.weight, cls.stages[1][0].dwconv.weight)


def test_runner_checkpoint_reads_without_running_code(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "iter_160000.pth"
    sd = mmseg_state_dict("openmmlab", seed=4)
    save_runner_checkpoint(path, sd, list("abcdefg"), marker)
    dense = read_dense_file(path)
    assert "inert placeholders" in capsys.readouterr().err
    assert dense.classes == list("abcdefg") and dense.layout == "openmmlab"
    model = _model()
    load_checkpoint(model, path)
    assert torch.equal(to_mmseg(model.state_dict())["backbone.stages.2.3.pointwise_conv2.weight"],
                       sd["backbone.stages.2.3.pointwise_conv2.weight"])
    assert not marker.exists()


@pytest.mark.parametrize("naming", ["openmmlab", "fair"])
def test_convert_cli_round_trips_bit_exactly(naming, tmp_path, capsys):
    sd = mmseg_state_dict("fair", seed=6)
    src = tmp_path / "fair.pth"
    torch.save({"state_dict": sd, "meta": {"CLASSES": list("abcdefg")}}, src)
    mid, back = tmp_path / f"to_{naming}.pth", tmp_path / "back.pth"
    assert main(["convert", str(src), str(mid), "--to", "mmseg", "--layout", naming]) == 0
    out = capsys.readouterr().out
    assert "read mmseg checkpoint (FAIR naming): upernet_convnext_atto, 7 classes" in out
    assert f"mmseg layout, {naming} naming" in out
    written = torch.load(mid, weights_only=True)
    assert written["meta"]["dataset_meta"]["classes"] == list("abcdefg")  # mmengine's place, and mmcv's
    assert set(written["state_dict"]) == set(mmseg_state_dict(naming))
    assert main(["convert", str(mid), str(back), "--to", "mmseg", "--layout", "fair"]) == 0
    again = torch.load(back, weights_only=True)["state_dict"]
    assert again.keys() == sd.keys() and all(torch.equal(again[k], sd[k]) for k in sd)
    # our own layout, self-describing, and read back
    ours = tmp_path / "ours.safetensors"
    assert main(["convert", str(mid), str(ours)]) == 0
    dense = read_dense_file(ours)
    assert (dense.family, dense.layout, dense.model_name, dense.classes) == \
        ("convnext", "native", "upernet_convnext_atto", list("abcdefg"))
    assert main(["convert", str(src), str(tmp_path / "x.pth"), "--to", "mmdet"]) == 2
    assert "use --to mmseg" in capsys.readouterr().err
    partial = {k: v for k, v in sd.items() if k != "auxiliary_head.conv_seg.bias"}
    torch.save({"state_dict": partial}, tmp_path / "partial.pth")
    assert main(["convert", str(tmp_path / "partial.pth"), str(tmp_path / "y.pth"), "--to", "mmseg"]) == 2
    assert "not a whole upernet_convnext_atto (missing from the checkpoint (1): aux_head.classifier.conv.bias)" \
        in capsys.readouterr().err
    assert not (tmp_path / "y.pth").exists()


def test_dense_pretrained_is_the_whole_file_and_offline_is_clear(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("CONVNEXT_NO_DOWNLOAD", "1")
    model = convnext.models.create_model("upernet_convnext_tiny", num_classes=150)
    with pytest.raises(CheckpointError, match=r"upernet_convnext_tiny \(ade20k_in1k_512\) is not in the cache and "
                                              r"downloads are disabled.*upernet_convnext_tiny_1k_512x512\.pth"):
        load_pretrained(model, "upernet_convnext_tiny")
    with pytest.raises(CheckpointError, match=r"convnext_tiny \(in22k\) is not in the cache"):
        load_pretrained(model, "upernet_convnext_tiny", tag="in22k")  # a backbone tag: ImageNet weights
    # a cached official file is loaded whole
    (tmp_path / "checkpoints").mkdir()
    torch.save({"state_dict": to_mmseg(model.state_dict(), naming="fair")},
               tmp_path / "checkpoints" / "upernet_convnext_tiny_1k_512x512.pth")
    fresh = convnext.models.create_model("upernet_convnext_tiny", num_classes=150)
    report = load_pretrained(fresh, "upernet_convnext_tiny")
    assert "read mmseg checkpoint (FAIR naming)" in str(report) and "official ade20k_in1k_512 file" in str(report)
    assert torch.equal(fresh.decode_head.classifier.conv.weight, model.decode_head.classifier.conv.weight)


@pytest.mark.slow
def test_tiny_file_of_the_official_size_loads_into_the_registered_model():
    # mmseg 1.2.2 counts UperNet-T 60,242,636 parameters (issue 14's peer run).
    sd = mmseg_state_dict("openmmlab", channels=512, aux_channels=256, classes=150,
                          arch=((3, 3, 9, 3), (96, 192, 384, 768)))
    n = sum(v.numel() for k, v in sd.items() if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert n == 60_242_636
    dense = read_dense_file({"state_dict": sd})
    assert (dense.model_name, dense.num_classes) == ("upernet_convnext_tiny", 150)
    model = convnext.models.create_model(dense.model_name, num_classes=dense.num_classes)
    model.load_state_dict(dense.state_dict, strict=True)
    assert convnext.count_params(model) == n
