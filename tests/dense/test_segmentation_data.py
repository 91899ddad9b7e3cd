"""ADE20K-layout segmentation data: label reduction, class count, errors, transforms, collate, COCO rasteriser."""
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.dense.segmentation_data import (
    SegmentationFolder, SegTrainTransform, coco_to_semantic, collate_segmentation,
    photometric_distortion,
)
from convnext.errors import DataError

SHARED = Path(__file__).parents[2] / ".." / "shared" / "data"


def _write(root, split, stem, label, size=None, ext=".jpg"):
    h, w = label.shape
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(0).integers(0, 255, (*(size or (h, w)), 3), dtype=np.uint8)
    Image.fromarray(rgb).save(root / "images" / split / f"{stem}{ext}")
    Image.fromarray(label.astype(np.uint8)).save(root / "annotations" / split / f"{stem}.png")


@pytest.fixture
def ade(tmp_path):
    """Two training images (labels 0..4, 0 = other) and one validation image, ADE20K convention."""
    a = np.zeros((40, 60), np.uint8)
    a[:, 30:] = 2
    a[:10] = 4
    b = np.full((48, 32), 1, np.uint8)
    b[0, 0] = 255
    _write(tmp_path, "training", "a", a)
    _write(tmp_path, "training", "b", b, ext=".png")
    _write(tmp_path, "validation", "v", np.full((40, 80), 3, np.uint8))
    return tmp_path


def test_reduce_zero_label_and_class_count(ade):
    ds = SegmentationFolder(ade, "training", crop_size=32)
    assert len(ds) == 2 and ds.num_classes == 4  # max label 4 -> class 3 -> 4 classes
    image, label = ds.load(0)
    assert image.shape == (3, 40, 60) and label.dtype == torch.int64
    assert label[20, 0] == 255 and label[20, 40] == 1 and label[0, 0] == 3  # 0 -> ignore, v -> v - 1
    assert ds.load(1)[1][0, 0] == 255  # 255 stays ignored
    raw = SegmentationFolder(ade, "training", reduce_zero_label=False)
    assert raw.num_classes == 5 and raw.load(0)[1][20, 0] == 0
    assert SegmentationFolder(ade, "validation").num_classes == 4  # scanned over both splits


def test_train_and_val_samples(ade):
    torch.manual_seed(0)
    ds = SegmentationFolder(ade, "training", crop_size=32)
    for i in range(2):
        image, label = ds[i]
        assert image.shape == (3, 32, 32) and label.shape == (32, 32)
        assert set(label.unique().tolist()) <= {0, 1, 2, 3, 255}
    val = SegmentationFolder(ade, "validation", crop_size=32)
    image, label = val[0]
    # base scale (128, 32): 40x80 fits as 32x64 (aspect kept); the label keeps its original size
    assert image.shape == (3, 32, 64) and label.shape == (40, 80)
    assert abs(float(image.mean())) < 2  # ImageNet-normalised


def test_train_transform_pads_small_crops_with_ignore():
    torch.manual_seed(0)
    t = SegTrainTransform(crop=64, base_scale=(40, 10), photometric=False)  # rescaled image < crop
    image, label = t(torch.full((3, 20, 30), 128.0), torch.ones(20, 30, dtype=torch.long))
    assert image.shape == (3, 64, 64) and label.shape == (64, 64)
    assert (label[-1] == 255).all() and (image[:, -1] == 0).all()  # padding: image 0, label ignore
    assert (label == 1).any()


def test_random_scale_range():
    torch.manual_seed(0)
    sizes = set()
    t = SegTrainTransform(crop=1000, base_scale=(400, 100), photometric=False, flip_prob=0)
    for _ in range(20):
        image, label = t(torch.zeros(3, 100, 200), torch.zeros(100, 200, dtype=torch.long))
        sizes.add(int((label != 255).sum(0).gt(0).sum()))  # width of the unpadded part
    # ratio 0.5..2 of the base (400, 100): short side 50..200 -> width 100..400
    assert min(sizes) >= 100 and max(sizes) <= 400 and len(sizes) > 5


def test_cat_max_ratio_prefers_mixed_crops():
    torch.manual_seed(0)
    label = torch.zeros(64, 256, dtype=torch.long)
    label[:, 192:] = 1  # only crops touching the right quarter hold two classes
    t = SegTrainTransform(crop=64, base_scale=(256, 64), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0)
    mixed = sum(len(t(torch.zeros(3, 64, 256), label)[1].unique()) > 1 for _ in range(20))
    assert mixed >= 15  # with cat_max_ratio 1 (no re-draw) about 1/3 would be mixed


def test_photometric_distortion_range_and_gray():
    torch.manual_seed(0)
    img = torch.rand(3, 16, 16) * 255
    for _ in range(10):
        out = photometric_distortion(img.clone())
        assert out.shape == img.shape and out.min() >= 0 and out.max() <= 255
    gray = torch.full((3, 4, 4), 100.0)
    for _ in range(10):  # saturation and hue leave a gray image gray
        out = photometric_distortion(gray.clone())
        assert torch.allclose(out[0], out[1], atol=1e-3) and torch.allclose(out[1], out[2], atol=1e-3)


def test_collate_pads():
    images, labels = collate_segmentation([(torch.ones(3, 4, 6), torch.zeros(5, 5, dtype=torch.long)),
                                           (torch.ones(3, 8, 2), torch.zeros(3, 7, dtype=torch.long))])
    assert images.shape == (2, 3, 8, 6) and labels.shape == (2, 5, 7)
    assert images[0, :, 4:].eq(0).all() and labels[1, 3:].eq(255).all() and labels.dtype == torch.int64


def test_errors_name_the_file(ade, tmp_path):
    with pytest.raises(DataError, match="annotations/testing"):
        SegmentationFolder(ade, "testing")
    (ade / "images" / "training" / "c.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"c\.jpg: image without annotation"):
        SegmentationFolder(ade, "training")
    (ade / "images" / "training" / "c.jpg").unlink()
    (ade / "annotations" / "training" / "d.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"d\.png: annotation without image"):
        SegmentationFolder(ade, "training", num_classes=4)
    (ade / "images" / "training" / "d.jpg").write_bytes(b"not a jpeg")
    ds = SegmentationFolder(ade, "training", num_classes=4)
    with pytest.raises(DataError, match=r"d\.jpg: unreadable image"):
        ds.load(2)
    with pytest.raises(DataError, match=r"a\.png: label value 4 beyond 3 classes"):
        SegmentationFolder(ade, "training", num_classes=3).load(0)
    other = tmp_path / "mismatch"
    _write(other, "training", "m", np.ones((10, 10)), size=(12, 10))
    with pytest.raises(DataError, match=r"m\.png: label size 10x10 differs from its image m\.jpg \(10x12\)"):
        SegmentationFolder(other, "training").load(0)
    rgb = tmp_path / "rgb"
    _write(rgb, "training", "r", np.ones((4, 4)))
    Image.new("RGB", (4, 4)).save(rgb / "annotations" / "training" / "r.png")
    with pytest.raises(DataError, match=r"r\.png: expected a single-channel"):
        SegmentationFolder(rgb, "training")


@pytest.fixture(scope="module")
def coco128(tmp_path_factory):
    tar = SHARED / "coco128.tar.gz"
    if not tar.exists():
        pytest.skip("../shared/data/coco128.tar.gz not available")
    root = tmp_path_factory.mktemp("coco128")
    with tarfile.open(tar) as f:
        f.extractall(root, filter="data")
    return root / "coco128"


def test_coco128_rasterised_and_loaded(coco128, tmp_path):
    from pycocotools.coco import COCO

    info = coco_to_semantic(coco128 / "annotations" / "instances_train2017.json", coco128 / "train2017",
                            tmp_path / "ade", split="training")
    assert info["images"] == 128 and info["num_classes"] == 80
    ds = SegmentationFolder(tmp_path / "ade", "training", crop_size=64)
    assert len(ds) == 128 and ds.num_classes == 80 and ds.class_names[0] == "person"
    coco = COCO(str(coco128 / "annotations" / "instances_train2017.json"))
    # one image checked against pycocotools directly: a lone non-crowd instance's pixels carry its class
    img_id = next(i for i in sorted(coco.getImgIds()) if len(coco.getAnnIds(imgIds=i)) == 1
                  and not coco.loadAnns(coco.getAnnIds(imgIds=i))[0]["iscrowd"])
    ann = coco.loadAnns(coco.getAnnIds(imgIds=img_id))[0]
    stem = Path(coco.loadImgs(img_id)[0]["file_name"]).stem
    index = [p.stem for p, _ in ds.samples].index(stem)
    _, label = ds.load(index)
    mask = torch.from_numpy(coco.annToMask(ann)).bool()
    expected = sorted(coco.getCatIds()).index(ann["category_id"])  # contiguous index (after reduce-zero)
    assert (label[mask] == expected).all() and (label[~mask] == 255).all()
    image, label = ds[index]
    assert image.shape == (3, 64, 64) and label.shape == (64, 64)
