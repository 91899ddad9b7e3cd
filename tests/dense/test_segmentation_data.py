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
    """Checked once at construction, before any training step (not mid-epoch in a loader worker)."""
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
    with pytest.raises(DataError, match=r"d\.png: unreadable label image"):
        SegmentationFolder(ade, "training", num_classes=4)
    (ade / "annotations" / "training" / "d.png").unlink()
    (ade / "images" / "training" / "d.jpg").unlink()
    with pytest.raises(DataError, match=r"a\.png: label value 4 beyond 3 classes \(values 1\.\.3 are classes"):
        SegmentationFolder(ade, "training", num_classes=3)
    other = tmp_path / "mismatch"
    _write(other, "training", "m", np.ones((10, 10)), size=(12, 10))
    with pytest.raises(DataError, match=r"label size differs from its image for 1 file\(s\): .*m\.png is 10x10, "
                                        r"its image m\.jpg 10x12"):
        SegmentationFolder(other, "training")
    rgb = tmp_path / "rgb"
    _write(rgb, "training", "r", np.ones((4, 4)))
    Image.new("RGB", (4, 4)).save(rgb / "annotations" / "training" / "r.png")
    with pytest.raises(DataError, match=r"r\.png: expected a single-channel \(mode L or P\) label PNG, got mode RGB"):
        SegmentationFolder(rgb, "training", num_classes=2)
    Image.fromarray(np.ones((4, 4), np.uint16) * 300).save(rgb / "annotations" / "training" / "r.png")
    with pytest.raises(DataError, match=r"r\.png: 16/32-bit label PNG \(mode I;16\); expected an 8-bit"):
        SegmentationFolder(rgb, "training", num_classes=2)


def test_two_images_of_one_stem_are_refused(ade):
    """a.jpg and a.png would pair with the one a.png label: one of them was silently dropped."""
    Image.new("RGB", (60, 40)).save(ade / "images" / "training" / "a.png")
    with pytest.raises(DataError, match=r"training: a\.jpg and a\.png share the stem 'a'"):
        SegmentationFolder(ade, "training")


def test_unreadable_images_are_skipped_and_counted_or_strict(ade):
    path = ade / "images" / "training" / "b.png"
    path.write_bytes(path.read_bytes()[:60])  # truncated after the header
    ds = SegmentationFolder(ade, "training", crop_size=32)
    assert ds[1] is None and ds[0] is not None
    images, labels = collate_segmentation([ds[0], ds[1]])
    assert images.shape[0] == labels.shape[0] == 1
    assert collate_segmentation([None])[0].shape[0] == 0
    with pytest.raises(DataError, match=r"b\.png: unreadable image .*drop --strict-images"):
        SegmentationFolder(ade, "training", crop_size=32, strict=True)[1]
    path.write_bytes(b"garbage")  # not even a header: known at construction
    ds = SegmentationFolder(ade, "training", crop_size=32)
    assert ds.unreadable == {1} and ds[1] is None and "1 unreadable image(s) will be skipped: b.png" in ds.warnings[0]
    with pytest.raises(DataError, match=r"b\.png: unreadable image"):
        SegmentationFolder(ade, "training", strict=True)


def test_label_maps_without_labelled_pixels_are_warned_or_refused(ade):
    Image.fromarray(np.zeros((48, 32), np.uint8)).save(ade / "annotations" / "training" / "b.png")
    ds = SegmentationFolder(ade, "training", num_classes=4)
    assert ds.unlabelled_images == 1
    assert "1 of 2 label map(s) have no labelled pixel (only 0 and 255) and add nothing to the loss: b.png" \
        in ds.warnings[0]
    Image.fromarray(np.full((40, 60), 255, np.uint8)).save(ade / "annotations" / "training" / "a.png")
    with pytest.raises(DataError, match=r"none of the 2 label maps has a labelled pixel \(only 0 and 255"):
        SegmentationFolder(ade, "training", num_classes=4)


def test_class_names_and_label_values(ade):
    ds = SegmentationFolder(ade, "training")
    assert ds.label_values == [1, 2, 3, 4] and ds.class_names == ["1", "2", "3", "4"]  # the values on disk
    raw = SegmentationFolder(ade, "training", reduce_zero_label=False)
    assert raw.label_values == [0, 1, 2, 3, 4] and raw.class_names == ["0", "1", "2", "3", "4"]
    # ADE20K's own objectInfo150 files: names by Idx (the value on disk), first synonym
    (ade / "objectInfo150.txt").write_text("Idx\tRatio\tTrain\tVal\tName\n1\t0.1\t1\t1\twall\n"
                                           "2\t0.1\t1\t1\tbuilding, edifice\n3\t0.1\t1\t1\tsky\n"
                                           "4\t0.1\t1\t1\tfloor, flooring\n")
    assert SegmentationFolder(ade, "training").class_names == ["wall", "building", "sky", "floor"]
    (ade / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n1,0.1,1,1,wall\n2,0.1,1,1,building;edifice\n"
                                           "3,0.1,1,1,sky\n4,0.1,1,1,floor;flooring\n")
    assert SegmentationFolder(ade, "training").class_names == ["wall", "building", "sky", "floor"]
    (ade / "classes.txt").write_text("a\nb\nc\nd\n\n\n")  # trailing blank lines: no class ''
    ds = SegmentationFolder(ade, "training")
    assert ds.class_names == ["a", "b", "c", "d"] and ds.num_classes == 4
    (ade / "classes.txt").write_text("a\n\nc\nd\n")
    with pytest.raises(DataError, match=r"classes.txt: line\(s\) 2 are empty"):
        SegmentationFolder(ade, "training")
    (ade / "classes.txt").write_text("a\nb\na\nd\n")
    with pytest.raises(DataError, match=r"classes.txt: class name\(s\) a appear more than once"):
        SegmentationFolder(ade, "training")


def test_exif_rotated_image_is_turned_to_fit_its_label(tmp_path):
    """A 90-degree EXIF orientation is applied when the label map has the shown size, else not."""
    for split, label_hw in (("training", (40, 20)), ("validation", (20, 40))):  # shown 20x40 / stored 40x20
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "annotations" / split).mkdir(parents=True)
        pixels = np.zeros((20, 40, 3), np.uint8)
        pixels[:, 20:] = 255  # stored: right half white
        exif = Image.Exif()
        exif[0x0112] = 6
        Image.fromarray(pixels).save(tmp_path / "images" / split / "x.jpg", exif=exif.tobytes(), quality=95)
        Image.fromarray(np.ones(label_hw, np.uint8)).save(tmp_path / "annotations" / split / "x.png")
    image, label = SegmentationFolder(tmp_path, "training", num_classes=1).load(0)
    assert image.shape == (3, 40, 20) and image[:, 22:].mean() > 200 and image[:, :18].mean() < 50  # turned
    image, label = SegmentationFolder(tmp_path, "validation", num_classes=1).load(0)
    assert image.shape == (3, 20, 40) and image[:, :, 22:].mean() > 200  # as stored


def test_data_error_from_a_loader_worker_is_one_line(ade):
    ds = SegmentationFolder(ade, "training", crop_size=32)
    ds.num_classes = 2  # as if a label file changed after the up-front check
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_segmentation)
    with pytest.raises(DataError) as e:
        list(loader)
    assert str(e.value).endswith("a.png: label value 4 beyond 2 classes (reduce_zero_label=True)")
    assert "Traceback" not in str(e.value)


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


def test_coco_to_semantic_checks_the_annotation_file(synthetic_coco, tmp_path):
    import json

    path = synthetic_coco / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["segmentation"] = [[10, 8, 30, 28]]  # pycocotools would paint it as a box
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"annotation id\(s\) 100: segmentation has a polygon of 4 coordinates"):
        coco_to_semantic(path, synthetic_coco / "train2017", tmp_path / "out")
