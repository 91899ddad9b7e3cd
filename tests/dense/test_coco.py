import json
import logging

import pytest
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from convnext.dense.coco import (
    CocoDataset,
    RandomSizeCrop,
    build_coco_dataset,
    coco_eval_transforms,
    coco_split_paths,
    coco_train_transforms,
    collate_detection,
)
from convnext.errors import DataError


def _dataset(root, **kw):
    return CocoDataset(root / "annotations" / "instances_train2017.json", root / "train2017", **kw)


def _mask_extent(mask):
    """xyxy of a (H, W) mask's pixels (right/bottom exclusive)."""
    ys, xs = torch.nonzero(mask, as_tuple=True)
    return torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)


def _check_aligned(image, target, tol):
    """Shapes agree and every mask covers its box to within tol pixels."""
    h, w = image.shape[-2:]
    n = len(target["labels"])
    assert target["size"] == (h, w)
    assert target["boxes"].shape == (n, 4) and target["masks"].shape == (n, h, w)
    assert target["masks"].dtype == torch.uint8 and target["boxes"].dtype == torch.float32
    for box, mask in zip(target["boxes"], target["masks"]):
        assert mask.any()
        assert torch.allclose(_mask_extent(mask), box, atol=tol), (_mask_extent(mask), box)
        assert box[0] >= 0 and box[1] >= 0 and box[2] <= w and box[3] <= h


def test_labels_classes_and_counts(synthetic_coco):
    ds = _dataset(synthetic_coco)
    assert len(ds) == 4
    assert ds.cat_ids == [3, 7, 12] and ds.classes == ["dog", "cat", "bird"]  # sorted by COCO id
    # two degenerate boxes skipped (0.5 px wide; 0.5 px left inside the image), one crowd region
    assert ds.skipped_annotations == 2 and ds.crowd_annotations == 1 and ds.num_annotations == 3
    assert len(ds.coco.getAnnIds()) == 6  # the evaluation ground truth keeps everything


def test_item_at_original_size(synthetic_coco):
    ds = _dataset(synthetic_coco)
    image, t = ds[0]
    assert image.shape == (3, 48, 64) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert t["image_id"] == 11 and t["orig_size"] == (48, 64) and t["size"] == (48, 64)
    assert t["labels"].tolist() == [2, 1]  # cat (id 7) -> 2, dog (id 3) -> 1; crowd bird excluded
    assert t["boxes"].tolist() == [[10, 8, 30, 28], [40, 20, 60, 44]]
    assert t["masks"][1].sum() == 20 * 24 and _mask_extent(t["masks"][1]).tolist() == [40, 20, 60, 44]  # RLE exact
    _check_aligned(image, t, tol=1)  # the polygon's rasterisation may add the edge pixel
    _, t = ds[1]  # uncompressed RLE
    assert t["labels"].tolist() == [3] and t["masks"][0].sum() == 15 * 20
    image, t = ds[2]  # no objects
    assert t["boxes"].shape == (0, 4) and t["labels"].shape == (0,) and t["masks"].shape == (0, 32, 32)


def test_eval_transform_sizes_and_alignment(synthetic_coco):
    ds = _dataset(synthetic_coco, transforms=coco_eval_transforms(img_size=32))  # max side 1333*32/800 = 53
    image, t = ds[0]
    assert image.shape == (3, 32, 43)  # short side 32 (48x64 -> 32x43: mmcv rounds int(64 * 2/3 + 0.5))
    assert t["orig_size"] == (48, 64) and t["size"] == (32, 43)
    assert torch.allclose(t["boxes"], torch.tensor([[10, 8, 30, 28], [40, 20, 60, 44]]) * torch.tensor(
        [43 / 64, 32 / 48, 43 / 64, 32 / 48]))  # mmdet's per-axis scale_factor new / old
    _check_aligned(image, t, tol=1.5)
    image, t = ds[3]  # 10x100: the long side hits the cap first
    assert t["size"] == (5, 53)
    assert ds[2][0].shape == (3, 32, 32)
    ds = _dataset(synthetic_coco, transforms=coco_eval_transforms())  # default 800
    assert ds[0][1]["size"] == (800, 1067)  # mmdet 3 / mmcv: int(64 * 800 / 48 + 0.5)


def test_train_transforms_scales_flips_crops_and_stays_aligned(synthetic_coco):
    ds = _dataset(synthetic_coco, transforms=coco_train_transforms(img_size=64))
    shorts = {round(s * 64 / 800) for s in range(480, 801, 32)}  # {38, 41, ..., 64}
    torch.manual_seed(0)
    centres, aspects = [], []
    for _ in range(40):
        image, t = ds[0]
        h, w = image.shape[-2:]
        assert min(h, w) in shorts or max(h, w) == round(1333 * 64 / 800)
        _check_aligned(image, t, tol=1.5)  # torchvision's floor-nearest mask resize drifts past 2 px
        aspects.append(w / h)
        if t["labels"].tolist() == [2, 1]:
            centres.append(float(t["boxes"][0, 0::2].mean() / w))  # cat's x centre, 0.31 unflipped
    assert any(c < 0.5 for c in centres) and any(c > 0.5 for c in centres)  # flipped and not
    assert any(abs(a - 64 / 48) > 0.1 for a in aspects)  # some draws took the crop policy


def test_random_size_crop_drops_boxes_with_their_masks():
    image = tv_tensors.Image(torch.zeros(3, 64, 64, dtype=torch.uint8))
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, :8, :8] = 1
    masks[1, 40:60, 40:60] = 1
    target = {"boxes": tv_tensors.BoundingBoxes([[0., 0, 8, 8], [40, 40, 60, 60]], format="XYXY",
                                                canvas_size=(64, 64)),
              "labels": torch.tensor([1, 2]), "masks": tv_tensors.Mask(masks)}
    tf = v2.Compose([RandomSizeCrop(16, 20), v2.SanitizeBoundingBoxes(min_size=1)])
    torch.manual_seed(0)
    kept = []
    for _ in range(30):
        out, t = tf(image, target)
        h, w = out.shape[-2:]
        assert 16 <= h <= 20 and 16 <= w <= 20
        assert len(t["labels"]) == len(t["boxes"]) == len(t["masks"])
        for box, mask, label in zip(t["boxes"], t["masks"], t["labels"]):
            assert torch.allclose(_mask_extent(mask), box)  # crop is exact: no rounding
            assert label in (1, 2)
        kept.append(len(t["labels"]))
    assert 0 in kept and 1 in kept  # crops that lose both, and one, box
    assert RandomSizeCrop(100, 200)(image).shape == (3, 64, 64)  # capped by the image


def test_collate():
    images, targets = collate_detection([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 7), {"a": 2})])
    assert [i.shape for i in images] == [(3, 4, 5), (3, 6, 7)] and targets == [{"a": 1}, {"a": 2}]


def _rewrite(root, edit):
    path = root / "annotations" / "instances_train2017.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return path


def test_bad_json_errors_name_the_file(synthetic_coco):
    path = synthetic_coco / "annotations" / "instances_train2017.json"
    with pytest.raises(DataError, match="nope.json: COCO annotation file not found"):
        CocoDataset(synthetic_coco / "nope.json", synthetic_coco / "train2017")
    path.write_text('{"images": [')
    with pytest.raises(DataError, match=r"instances_train2017.json: not valid JSON"):
        _dataset(synthetic_coco)
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(DataError, match="instances_train2017.json: missing top-level key 'categories'"):
        _dataset(synthetic_coco)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"][1].pop("bbox"), r"annotations\[1\] lacks key 'bbox'"),
    (lambda d: d["images"][0].pop("height"), r"images\[0\] lacks key 'height'"),
    (lambda d: d["annotations"][0].update(image_id=999), r"1 annotations point to image ids not in 'images' "
                                                         r"\(annotation ids 100\)"),
    (lambda d: d["annotations"][0].update(category_id=5), r"category ids 5 are used by annotations but not in"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), r"annotation id\(s\) 100: bbox must be 4 numbers"),
    (lambda d: d["annotations"][0].update(bbox=[1, "2", 3, 4]), r"annotation id\(s\) 100: bbox must be 4 numbers"),
    # duplicate ids: the evaluation index keeps one annotation per id, images one entry per id
    (lambda d: d["annotations"][2].update(id=101), r"duplicate annotation ids 101 in 'annotations'"),
    (lambda d: d["images"][1].update(id=11), r"duplicate image ids 11 in 'images'"),
    (lambda d: d["categories"][1].update(id=7), r"duplicate category ids 7 in 'categories'"),
    (lambda d: d["annotations"][3].update(id="a"), r"annotation ids must be integers, got 'a'"),
    (lambda d: d["annotations"][0].pop("id"), r"annotations\[0\] lacks key 'id'"),
    # types that would end in a traceback of the COCO tools or of torch
    (lambda d: d["annotations"][0].update(category_id="7"), r"annotation id\(s\) 100: 'category_id' must be an "
                                                            r"integer, got '7'"),
    (lambda d: d["images"][0].update(width="64"), r"image id\(s\) 11: 'width' must be a positive integer, got '64'"),
    (lambda d: d["images"][0].update(height=0), r"image id\(s\) 11: 'height' must be a positive integer, got 0"),
    # segmentations: COCO polygons need >= 6 coordinates, an even count
    (lambda d: d["annotations"][0].update(segmentation=[[10, 8, 30, 28]]),
     r"annotation id\(s\) 100: segmentation has a polygon of 4 coordinates \(a COCO polygon needs an even count"),
    (lambda d: d["annotations"][0].update(segmentation=[[10, 8, 30, 8, 30]]),
     r"annotation id\(s\) 100: segmentation has a polygon of 5 coordinates"),
    (lambda d: d["annotations"][0].update(segmentation=[[10, 8, 30, 8, 30, 28, 10]]),
     r"annotation id\(s\) 100: segmentation has a polygon of 7 coordinates"),
    (lambda d: d["annotations"][0].update(segmentation=[]), r"annotation id\(s\) 100: segmentation is an empty list"),
    (lambda d: d["annotations"][0].update(segmentation="x"), r"annotation id\(s\) 100: segmentation must be polygons"),
    (lambda d: d["annotations"][1]["segmentation"].update(counts="!!!!"),
     r"annotation id\(s\) 101: segmentation compressed RLE counts are malformed"),
    (lambda d: d["annotations"][1]["segmentation"].update(counts=""), r"annotation id\(s\) 101: segmentation RLE"),
    (lambda d: d["annotations"][1]["segmentation"].update(size=[48, 63]),
     r"annotation id\(s\) 101: segmentation RLE size \[48, 63\] differs from its image's"),
    (lambda d: d["annotations"][2]["segmentation"]["counts"].append(5),
     r"annotation id\(s\) 102: segmentation uncompressed RLE counts must be non-negative integers summing to 48x64"),
    (lambda d: d["images"].append(dict(id=55, file_name="gone.png", height=4, width=4)),
     r"1 of 5 images are missing from .*train2017: gone.png"),
])
def test_bad_content_errors(synthetic_coco, edit, message):
    path = _rewrite(synthetic_coco, edit)
    with pytest.raises(DataError, match=message) as e:
        _dataset(synthetic_coco)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_image_not_matching_its_json_size(synthetic_coco):
    """Checked up front from the headers, before any training step."""
    _rewrite(synthetic_coco, lambda d: d["images"][2].update(height=31))
    with pytest.raises(DataError, match=r"1 image\(s\) differ from their width/height .*33.png is 32x32, "
                                        r"the JSON says 32x31"):
        _dataset(synthetic_coco)


def test_split_layout_and_val_fallback(synthetic_coco, caplog):
    ann, img_dir, warning = coco_split_paths(synthetic_coco, "train")
    assert ann.name == "instances_train2017.json" and img_dir.name == "train2017" and warning is None
    with caplog.at_level(logging.WARNING):
        val = build_coco_dataset(synthetic_coco, "val", img_size=32)
    assert "no annotations/instances_val2017.json, evaluating on the train split" in val.warning
    assert val.warning in caplog.text and "\n" not in val.warning
    assert val[0][1]["size"] == (32, 43)  # val -> test transforms (mmcv's rescale of 48x64)
    with pytest.raises(DataError, match="instances_val2017.json: COCO annotation file not found"):
        coco_split_paths(synthetic_coco / "train2017", "val")
    with pytest.raises(DataError, match="split must be 'train' or 'val'"):
        coco_split_paths(synthetic_coco, "test")


def test_coco128_counts(coco128):
    ds = build_coco_dataset(coco128, "train", img_size=320)
    assert len(ds) == 128 and len(ds.classes) == 80 and ds.cat_ids[:3] == [1, 2, 3]
    # 939 objects per the data README: 10 crowd regions, no degenerate box, 929 training targets
    assert len(ds.coco.getAnnIds()) == 939
    assert ds.crowd_annotations == 10 and ds.skipped_annotations == 0 and ds.num_annotations == 929
    torch.manual_seed(0)
    image, t = ds[0]
    assert max(image.shape[-2:]) <= round(1333 * 320 / 800) and min(image.shape[-2:]) <= 320
    h, w = image.shape[-2:]
    assert t["masks"].shape == (len(t["labels"]), h, w) and t["boxes"].shape == (len(t["labels"]), 4)
    errors = []
    for box, mask in zip(t["boxes"], t["masks"]):
        extent = _mask_extent(mask)
        assert (extent[:2] >= box[:2] - 2).all() and (extent[2:] <= box[2:] + 2).all()  # mask inside its box
        errors.append(float((extent - box).abs().max()))
    # Downsampling can lose a thin sliver at an object's edge (one bowl here); the rest fit to 3 px.
    assert sum(e <= 3 for e in errors) >= len(errors) - 1, errors


@pytest.mark.slow
def test_coco128_every_item(coco128):
    ds = CocoDataset(coco128 / "annotations" / "instances_train2017.json", coco128 / "train2017")
    assert sum(len(ds[i][1]["labels"]) for i in range(len(ds))) == 929


def _exif_jpeg(path, w, h, orientation):
    """A w x h (stored) JPEG carrying EXIF Orientation `orientation`, left half black, right half white."""
    import numpy as np
    from PIL import Image

    pixels = np.zeros((h, w, 3), np.uint8)
    pixels[:, w // 2:] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(path, exif=exif.tobytes(), quality=95)


def _one_image_coco(root, w, h, file_name="a.jpg", **ann):
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    data = {"images": [dict(id=1, file_name=file_name, width=w, height=h)],
            "annotations": [dict(id=1, image_id=1, category_id=1, bbox=[1, 1, 6, 6], iscrowd=0, area=36.0,
                                 segmentation=[[1, 1, 7, 1, 7, 7, 1, 7]], **ann)],
            "categories": [dict(id=1, name="thing")]}
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    return data


@pytest.mark.parametrize("json_size", ["shown", "stored"])
def test_exif_rotated_jpeg_both_conventions(tmp_path, json_size):
    """Width/height are of the image as shown (EXIF orientation applied), as mmdet/mmcv and detectron2
    read it; a JSON giving the stored size of a 90-degree-rotated image is read as stored, with a warning."""
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    _exif_jpeg(root / "train2017" / "a.jpg", 40, 20, orientation=6)  # stored 40x20, shown 20x40 (turned 90 cw)
    w, h = (20, 40) if json_size == "shown" else (40, 20)
    _one_image_coco(root, w, h)
    ds = _dataset(root)
    image, t = ds[0]
    assert image.shape == (3, h, w) and t["orig_size"] == (h, w) and t["masks"].shape == (1, h, w)
    if json_size == "shown":  # orientation 6: the stored right half (white) ends up at the bottom
        assert image[:, :h // 2 - 2].mean() < 0.1 and image[:, h // 2 + 2:].mean() > 0.9
        assert ds.stored_orientation == 0 and ds.warnings == []
    else:
        assert image[:, :, :w // 2 - 2].mean() < 0.1 and image[:, :, w // 2 + 2:].mean() > 0.9
        assert ds.stored_orientation == 1
        assert "1 image(s) carry an EXIF orientation that swaps width and height, but the JSON gives their " \
               "stored size: read as stored (a.jpg)" in ds.warnings[0]


def test_exif_rotated_jpeg_of_another_size_is_refused_by_name(tmp_path):
    root = tmp_path / "coco"
    (root / "train2017").mkdir(parents=True)
    _exif_jpeg(root / "train2017" / "a.jpg", 40, 20, orientation=8)
    _one_image_coco(root, 30, 40)
    with pytest.raises(DataError, match=r"a.jpg is 20x40 \(stored 40x20, EXIF orientation 8\), the JSON says 30x40"):
        _dataset(root)


def test_nonfinite_boxes_are_skipped_and_warned(synthetic_coco):
    root = synthetic_coco
    path = root / "annotations" / "instances_train2017.json"
    # json.dumps writes NaN / Infinity, which json.load reads back (as Python's json module allows)
    text = path.read_text().replace("[40, 20, 20, 24]", "[40, NaN, 20, 24]").replace("[5, 10, 15, 20]",
                                                                                     "[5, 10, Infinity, 20]")
    path.write_text(text)
    ds = _dataset(root)
    assert ds.nonfinite_annotations == 2 and ds.num_annotations == 1
    assert any("skipped 2 annotation(s) whose bbox holds NaN or inf (annotation ids 101, 105)" in w
               for w in ds.warnings)
    assert len(ds.coco.getAnnIds()) == 4  # not in the evaluation's ground truth either


def test_unreadable_images_are_skipped_and_counted_or_strict(synthetic_coco):
    from convnext.dense.coco import count_skipped

    root = synthetic_coco
    (root / "train2017" / "22.png").write_bytes(b"not an image")  # no valid header
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=95)
    (root / "train2017" / "33.png").write_bytes(buf.getvalue()[:-400])  # truncated: header fine, pixels not
    ds = _dataset(root)
    assert ds.unreadable == {1} and any("1 unreadable image(s) will be skipped: 22.png" in w for w in ds.warnings)
    batch = [ds[i] for i in range(4)]
    assert batch[1] is None and batch[2] is None and batch[0] is not None and batch[3] is not None
    images, targets = collate_detection(batch)
    assert len(images) == 2 and count_skipped(batch) == 2
    with pytest.raises(DataError, match=r"22.png: unreadable image"):
        _dataset(root, strict=True)
    Image.new("RGB", (30, 40)).save(root / "train2017" / "22.png")  # readable again
    strict = _dataset(root, strict=True)
    with pytest.raises(DataError, match=r"33.png: cannot decode image .*drop --strict-images"):
        strict[2]


def test_num_classes_must_match_the_categories(synthetic_coco):
    from convnext.errors import ConfigError

    assert len(build_coco_dataset(synthetic_coco, "train", img_size=32, num_classes=3).classes) == 3
    with pytest.raises(ConfigError, match=r"--num-classes 5: .*instances_train2017.json has 3 categories "
                                          r"\(dog, cat, bird\); detection takes its classes"):
        build_coco_dataset(synthetic_coco, "train", img_size=32, num_classes=5)


def test_data_error_in_a_loader_worker_reaches_the_user_as_one_line(synthetic_coco):
    """torch re-raises a worker's exception built from its traceback text: the message survives."""
    from torch.utils.data import DataLoader

    _rewrite(synthetic_coco, lambda d: d["images"][2].update(height=32))
    ds = _dataset(synthetic_coco)
    ds.images[2] = dict(ds.images[2], height=31)  # a size change after the up-front check (file replaced)
    loader = DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_detection)
    with pytest.raises(DataError) as e:
        list(loader)
    assert str(e.value).endswith("33.png: image is 32x32 but " + str(ds.ann_file) + " says 32x31")
    assert "\n" not in str(e.value) and "Traceback" not in str(e.value)


def test_detection_task_honours_strict_num_classes_and_prints_the_warnings(synthetic_coco):
    from convnext.dense.tasks import DetectionTask
    from convnext.errors import ConfigError
    from convnext.train import load_config

    cfg = load_config("coco_detection", data=str(synthetic_coco), img_size=32, num_classes=5)
    with pytest.raises(ConfigError, match=r"--num-classes 5: .* has 3 categories"):
        DetectionTask().build_data(cfg)
    (synthetic_coco / "train2017" / "22.png").write_bytes(b"broken")
    data = DetectionTask().build_data(load_config("coco_detection", data=str(synthetic_coco), img_size=32))
    assert any("1 unreadable image(s) will be skipped: 22.png" in n for n in data.notes)
    assert any("skipped 2 annotation(s) with boxes of 1 pixel or less" in n for n in data.notes)
    batch = [data.train[i] for i in range(len(data.train))]
    images, targets, skipped = data.collate_train(batch)
    assert len(images) == 3 and skipped == 1
    with pytest.raises(DataError, match=r"22.png: unreadable image"):
        DetectionTask().build_data(load_config("coco_detection", data=str(synthetic_coco), img_size=32,
                                               strict_images=True))
