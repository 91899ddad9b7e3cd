"""The pretrained registry is consistent with the model registry and never yields random weights."""
import dataclasses

import pytest
import torch

from convnext import create_model  # builds and loads (convnext.models.create_model only builds)
from convnext.models import get_spec
from convnext.weights import CheckpointError, get_pretrained, list_pretrained, load_pretrained
from convnext.weights.pretrained import download_pretrained


def test_registry_entries_are_consistent():
    entries = [w for w in list_pretrained() if w.task == "classification"]
    # Official README: 1K-224 T/S/B/L, 1K-384 B/L, 22K + 22K->1K at 224/384 for T..XL, isotropic S/B/L.
    assert len(entries) == 4 + 2 + 5 * 3 + 3
    for w in entries:
        get_spec(w.model)  # every entry names a registered model
        assert w.url == f"https://dl.fbaipublicfiles.com/convnext/{w.filename}"
        assert (w.num_classes, w.label_set) in [(1000, "imagenet-1k"), (21841, "imagenet-22k")]
        assert w.crop_pct == (1.0 if w.resolution >= 384 else 0.875) and w.interpolation == "bicubic"
        assert (w.top1 is None) == (w.num_classes == 21841)
        assert w.sha256 is None  # none published; must not be invented
    assert get_pretrained("convnext_tiny").filename == "convnext_tiny_1k_224_ema.pth"
    assert get_pretrained("convnext_xlarge").filename == "convnext_xlarge_22k_1k_224_ema.pth"
    assert get_pretrained("convnext_base", "in22k_ft_in1k_384").top1 == 86.8


# The paper's Table 3 (box AP, mask AP) and Table 4 (mIoU single-scale, multi-scale), written out here.
_TABLE3 = {"mask_rcnn_convnext_tiny": (46.2, 41.7), "cascade_mask_rcnn_convnext_tiny": (50.4, 43.7),
           "cascade_mask_rcnn_convnext_small": (51.9, 45.0), "cascade_mask_rcnn_convnext_base": (52.7, 45.6)}
_TABLE3_22K = {"cascade_mask_rcnn_convnext_base": (54.0, 46.9), "cascade_mask_rcnn_convnext_large": (54.8, 47.6),
               "cascade_mask_rcnn_convnext_xlarge": (55.2, 47.7)}
_TABLE4 = {("tiny", "1k"): (46.0, 46.7), ("small", "1k"): (48.7, 49.6), ("base", "1k"): (49.1, 49.9),
           ("base", "22k"): (52.6, 53.1), ("large", "22k"): (53.2, 53.7), ("xlarge", "22k"): (53.6, 54.0)}


def test_dense_registry_entries_carry_the_papers_results():
    dense = [w for w in list_pretrained() if w.task != "classification"]
    # FAIR: 7 detection + 6 segmentation files; OpenMMLab zoo: 3 mmdet + 6 mmseg files.
    assert len(dense) == 7 + 6 + 3 + 6
    for w in dense:
        get_spec(w.model)
        assert w.url.startswith(("https://dl.fbaipublicfiles.com/convnext/coco/",
                                 "https://dl.fbaipublicfiles.com/convnext/ade20k/",
                                 "https://download.openmmlab.com/mmdetection/v2.0/convnext/",
                                 "https://download.openmmlab.com/mmsegmentation/v0.5/convnext/"))
        assert w.url.endswith("/" + w.filename) and w.sha256 is None
        assert w.naming == ("fair" if "fbaipublicfiles" in w.url else "openmmlab")
        assert (w.zoo_reported is None) == (w.naming == "fair")
        if w.task == "detection":
            table = _TABLE3_22K if "in22k" in w.tag else _TABLE3
            assert (w.box_ap, w.mask_ap) == table[w.model] and (w.num_classes, w.label_set) == (80, "coco")
        else:
            size, pre = w.model.split("_")[-1], "22k" if "in22k" in w.tag else "1k"
            assert (w.miou, w.miou_ms) == _TABLE4[(size, pre)] and (w.num_classes, w.label_set) == (150, "ade20k")
            assert w.resolution == (640 if pre == "22k" else 512)
    assert get_pretrained("upernet_convnext_tiny").url == \
        "https://dl.fbaipublicfiles.com/convnext/ade20k/upernet_convnext_tiny_1k_512x512.pth"
    assert get_pretrained("cascade_mask_rcnn_convnext_tiny").url == \
        "https://dl.fbaipublicfiles.com/convnext/coco/cascade_mask_rcnn_convnext_tiny_1k_3x.pth"


def test_offline_fails_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("CONVNEXT_NO_DOWNLOAD", "1")
    with pytest.raises(CheckpointError, match=r"downloads are disabled.*checkpoint=PATH.*--checkpoint"):
        create_model("convnext_isotropic_small", pretrained=True)
    with pytest.raises(CheckpointError, match="available: in1k"):
        create_model("convnext_tiny", pretrained="nonsense")
    with pytest.raises(CheckpointError, match="no official pretrained weights for 'convnext_atto'"):
        create_model("convnext_atto", pretrained=True)


def test_cached_checkpoint_is_loaded_and_hash_checked(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    monkeypatch.setenv("CONVNEXT_NO_DOWNLOAD", "1")
    weights = get_pretrained("convnext_isotropic_small")
    src = create_model("convnext_isotropic_small")
    (tmp_path / "checkpoints").mkdir()
    # Stored in fp16 to keep the test light; loading casts to the model's dtype.
    half = {k: v.half() for k, v in src.state_dict().items()}
    torch.save({"model": half}, tmp_path / "checkpoints" / weights.filename)
    model = create_model("convnext_isotropic_small", num_classes=10, pretrained=True, reinit_head=True)
    assert torch.equal(model.blocks[3].pwconv1.weight, src.blocks[3].pwconv1.weight.half().float())
    report = load_pretrained(create_model("convnext_isotropic_small"), "convnext_isotropic_small")
    assert report.layout == "official" and not report.head_reinitialized
    bad = dataclasses.replace(weights, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="sha256 does not match"):
        download_pretrained(bad)
