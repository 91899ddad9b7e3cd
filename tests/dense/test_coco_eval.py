import json
import math

import numpy as np
import pytest
import torch

from convnext.dense.coco import CocoDataset, _make_coco, coco_backend, coco_eval_transforms
from convnext.dense.coco_eval import COCO_METRICS, CocoEvaluator, format_ap, merge_predictions

NAMES = [f"{t}_{m}" for t in ("bbox", "segm") for m in COCO_METRICS]


def _gt_as_predictions(target):
    """The targets as a model's output: score 1, exact masks as (K, 1, H, W) probabilities."""
    n = len(target["labels"])
    return {"boxes": target["boxes"], "scores": torch.ones(n), "labels": target["labels"],
            "masks": target["masks"][:, None].float()}


def _one_box_coco(segm_mask=None):
    """One 100x100 image (id 1) with one 'thing' (category 4) at x 20..60, y 20..60 (area 1600, medium)."""
    ann = dict(id=1, image_id=1, category_id=4, bbox=[20, 20, 40, 40], area=1600, iscrowd=0)
    mask = np.zeros((100, 100), np.uint8)
    mask[20:60, 20:60] = 1
    rle = coco_backend()[2].encode(np.asfortranarray(mask))
    ann["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    return _make_coco({"images": [dict(id=1, height=100, width=100, file_name="x.png")], "annotations": [ann],
                       "categories": [dict(id=4, name="thing")]})


def _predict_ground_truth(ds, n=None):
    ev = CocoEvaluator(ds)
    for i in range(len(ds) if n is None else n):
        _, t = ds[i]
        ev.update([_gt_as_predictions(t)], [t])
    return ev


def test_ground_truth_as_predictions_scores_100(synthetic_coco):
    path = synthetic_coco / "annotations/instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = [a for a in data["annotations"] if a["id"] not in (103, 104)]  # the degenerate two
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, synthetic_coco / "train2017")
    m = _predict_ground_truth(ds).summarize(per_class=True)
    assert set(m) == set(NAMES) | {f"{t}_AP_{c}" for t in ("bbox", "segm") for c in ds.classes}
    for t in ("bbox", "segm"):
        assert m[f"{t}_AP"] == m[f"{t}_AP50"] == m[f"{t}_AP75"] == m[f"{t}_APs"] == m[f"{t}_AR100"] == 100
        assert math.isnan(m[f"{t}_APm"]) and math.isnan(m[f"{t}_APl"])  # no medium/large objects: undefined
        assert [m[f"{t}_AP_{c}"] for c in ("dog", "cat", "bird")] == [100, 100, 100]
    # the crowd bird of image 11 was not predicted and costs nothing: COCO ignores crowd regions


def test_skipped_annotations_still_count_as_ground_truth(synthetic_coco):
    # Training skips the two degenerate dog boxes, evaluation keeps the file's ground truth (as
    # MMDetection does): 1 of 3 dogs found -> recall 1/3, AP = 34 of 101 recall points.
    ds = CocoDataset(synthetic_coco / "annotations/instances_train2017.json", synthetic_coco / "train2017")
    m = _predict_ground_truth(ds).summarize(per_class=True)
    for t in ("bbox", "segm"):
        assert m[f"{t}_AP_dog"] == pytest.approx(100 * 34 / 101) and m[f"{t}_AP_cat"] == 100
        assert m[f"{t}_AP"] == pytest.approx((100 * 34 / 101 + 200) / 3)
        assert m[f"{t}_AR100"] == pytest.approx((100 / 3 + 200) / 3)


def test_rescales_from_size_to_orig_size():
    coco = _one_box_coco()
    ev = CocoEvaluator(coco)
    assert ev.cat_ids == [4]
    mask = torch.zeros(1, 1, 50, 50)
    mask[0, 0, 10:30, 10:30] = 1  # the object at half resolution
    ev.update([{"boxes": torch.tensor([[10., 10, 30, 30]]), "scores": torch.tensor([0.9]),
                "labels": torch.tensor([1]), "masks": mask}], [{"image_id": 1, "orig_size": (100, 100),
                                                                 "size": (50, 50)}])
    (box,), (segm,) = ev.predictions[1]["bbox"], ev.predictions[1]["segm"]
    assert box["bbox"] == [20, 20, 40, 40] and box["category_id"] == 4 and box["score"] == pytest.approx(0.9)
    assert coco_backend()[2].area(segm["segmentation"]) == 1600  # bilinear x2 then > 0.5: exactly 40x40
    m = ev.summarize()
    assert m["bbox_AP"] == m["segm_AP"] == 100


def test_mask_padding_beyond_size_is_ignored():
    ev = CocoEvaluator(_one_box_coco(), iou_types=("segm",))
    mask = torch.zeros(1, 1, 64, 64)  # padded batch canvas: only the top-left (50, 50) is the image
    mask[0, 0, 10:30, 10:30] = 1
    mask[0, 0, 55:, 55:] = 1  # padding: must not leak into the rescaled mask
    ev.update([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([1]), "masks": mask}],
              [{"image_id": 1, "orig_size": (100, 100), "size": (50, 50)}])
    assert coco_backend()[2].area(ev.predictions[1]["segm"][0]["segmentation"]) == 1600
    assert set(ev.summarize()) == set(NAMES[12:])


def test_shifted_box_known_ap():
    ev = CocoEvaluator(_one_box_coco(), iou_types=("bbox",))
    # shifted right by 8 px: IoU = 32*40 / (48*40) = 0.67 -> a match at IoU thresholds 0.50 ... 0.65 (4 of 10)
    ev.update([{"boxes": torch.tensor([[28., 20, 68, 60]]), "scores": torch.ones(1), "labels": torch.tensor([1])}],
              [{"image_id": 1, "orig_size": (100, 100), "size": (100, 100)}])
    m = ev.summarize()
    assert m["bbox_AP"] == pytest.approx(40) and m["bbox_AP50"] == 100 and m["bbox_AP75"] == 0
    assert m["bbox_APm"] == pytest.approx(40) and math.isnan(m["bbox_APs"]) and math.isnan(m["bbox_APl"])
    assert m["bbox_AR1"] == pytest.approx(40)


def test_no_detections_give_zero():
    coco = _one_box_coco()
    assert CocoEvaluator(coco).summarize() == dict.fromkeys(NAMES, 0.0)  # no update at all
    ev = CocoEvaluator(coco)
    ev.update([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 1, 100, 100)}], [{"image_id": 1, "orig_size": (100, 100), "size": (100, 100)}])
    assert ev.summarize(per_class=True) == {**dict.fromkeys(NAMES, 0.0), "bbox_AP_thing": 0.0, "segm_AP_thing": 0.0}


def test_no_ground_truth_is_nan_not_minus_one(synthetic_coco):
    """`annotations: []`: AP is undefined (COCOeval's -1 sentinel), reported as NaN / "n/a", never -1."""
    path = synthetic_coco / "annotations/instances_train2017.json"
    data = json.loads(path.read_text())
    data["annotations"] = []
    path.write_text(json.dumps(data))
    ds = CocoDataset(path, synthetic_coco / "train2017")
    ev = CocoEvaluator(ds)
    _, t = ds[0]
    box = {"boxes": torch.tensor([[1., 1, 20, 20]]), "scores": torch.ones(1), "labels": torch.tensor([1]),
           "masks": torch.ones(1, 1, 48, 64)}
    for outputs in ([box], [{k: v[:0] for k, v in box.items()}]):  # a false positive, then nothing detected
        ev.reset()
        ev.update(outputs, [t])
        m = ev.summarize(per_class=True)
        assert all(math.isnan(v) for v in m.values()), m
    assert format_ap(m["bbox_AP"]) == "n/a (no ground truth)" and format_ap(12.345) == "12.35"


def test_merge_keeps_one_prediction_set_per_image():
    # rank 1 repeats image 2 (DistributedSampler padding): its copy must not double the detections
    merged = merge_predictions([{1: "a", 2: "b"}, {2: "b-again", 3: "c"}])
    assert merged == {1: "a", 2: "b", 3: "c"}


def test_bad_iou_type():
    with pytest.raises(ValueError, match="iou_types must be 'bbox' and/or 'segm'"):
        CocoEvaluator(_one_box_coco(), iou_types=("keypoints",))


def test_coco128_ground_truth_scores_100(coco128):
    # 16 images at the eval transform's size 320: boxes scale back exactly; masks resampled twice
    # (nearest down, bilinear up) lose a few boundary pixels, so mask AP stays high but not 100.
    ds = CocoDataset(coco128 / "annotations/instances_train2017.json", coco128 / "train2017",
                     transforms=coco_eval_transforms(320))
    ev = _predict_ground_truth(ds, 16)
    m = ev.summarize()
    assert m["bbox_AP"] == pytest.approx(100) and m["bbox_AR100"] == pytest.approx(100)
    assert 80 < m["segm_AP"] < 100 and m["segm_AP50"] == pytest.approx(100)


@pytest.mark.slow
def test_coco128_all_images_ground_truth_scores_100(coco128):
    ds = CocoDataset(coco128 / "annotations/instances_train2017.json", coco128 / "train2017")
    ev = _predict_ground_truth(ds)
    m = ev.summarize()
    assert all(m[f"{t}_{k}"] == pytest.approx(100) for t in ("bbox", "segm") for k in ("AP", "AP50", "AP75", "AR100"))


def _ddp_worker(rank, root, store, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ds = CocoDataset(root / "annotations/instances_train2017.json", root / "train2017")
        ev = CocoEvaluator(ds)
        for i in ([0, 1], [1, 2, 3])[rank]:  # image 1 twice, as DistributedSampler pads
            _, t = ds[i]
            ev.update([_gt_as_predictions(t)], [t])
        (out / f"{rank}.json").write_text(json.dumps(ev.summarize()))
    finally:
        dist.destroy_process_group()


def test_summarize_gathers_from_ranks(synthetic_coco, monkeypatch):
    """The collective path on one process: rank 0 sees rank 1's predictions through all_gather_object."""
    import torch.distributed as dist

    ds = CocoDataset(synthetic_coco / "annotations/instances_train2017.json", synthetic_coco / "train2017")
    other = _predict_ground_truth(ds)  # "rank 1" holds every image, rank 0 only the first
    ev = CocoEvaluator(ds)
    _, t = ds[0]
    ev.update([_gt_as_predictions(t)], [t])
    broadcast = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "all_gather_object",
                        lambda out, obj: out.__setitem__(slice(None), [obj, other.predictions]))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda objs, src: broadcast.append((list(objs), src)))
    m = ev.summarize()
    assert m["bbox_AP"] == pytest.approx((100 * 34 / 101 + 200) / 3)  # all 4 images, image 11 once
    assert broadcast == [([m], 0)]


@pytest.mark.slow  # about 30 s: two spawned interpreters
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_ranks_gather_to_the_single_process_result(synthetic_coco, tmp_path):
    torch.multiprocessing.spawn(_ddp_worker, args=(synthetic_coco, tmp_path / "store", tmp_path), nprocs=2)
    single = _predict_ground_truth(CocoDataset(synthetic_coco / "annotations/instances_train2017.json",
                                               synthetic_coco / "train2017")).summarize()
    def same(m):  # NaN (undefined) compares unequal to itself: compare it as None
        return {k: None if math.isnan(v) else v for k, v in m.items()}

    assert same(json.loads((tmp_path / "0.json").read_text())) == same(json.loads((tmp_path / "1.json").read_text())) \
        == same(single)
    assert single["bbox_AP"] == pytest.approx((100 * 34 / 101 + 200) / 3)  # every image counted once


def test_pycocotools_fallback(synthetic_coco, monkeypatch):
    import sys

    pytest.importorskip("pycocotools")
    ds = CocoDataset(synthetic_coco / "annotations/instances_train2017.json", synthetic_coco / "train2017")
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # import fails -> pycocotools
    from pycocotools.coco import COCO

    assert coco_backend()[0] is COCO
    ev = _predict_ground_truth(ds)  # the dataset's faster-coco-eval ground truth is rebuilt for pycocotools
    assert isinstance(ev.coco, COCO)
    m = ev.summarize()
    assert m["bbox_AP"] == m["segm_AP"] == pytest.approx((100 * 34 / 101 + 200) / 3)


def test_summary_line_says_no_ground_truth():
    from convnext.dense.tasks import DetectionTask

    line = DetectionTask().summary_line({"bbox_AP": math.nan, "segm_AP": math.nan})
    assert line == "box AP n/a (no ground truth)  mask AP n/a (no ground truth)" and "-1" not in line
    assert DetectionTask().summary_line({"bbox_AP": 49.2, "segm_AP": 42.81}) == "box AP 49.20  mask AP 42.81"


def test_evaluation_is_the_detector_at_the_original_size(synthetic_coco):
    """The evaluation loop feeds COCO exactly `model(images, out_sizes=orig_sizes)` (mmdet's rescale=True):
    boxes divided by the per-axis resize factor, masks pasted at the original size, kept at >= 0.5;
    the evaluator rescales nothing more."""
    from convnext.dense.coco import collate_detection
    from convnext.dense.tasks import CocoMetrics
    from convnext.models import create_model
    from convnext.train.engine import evaluate

    ds = CocoDataset(synthetic_coco / "annotations/instances_train2017.json", synthetic_coco / "train2017",
                     transforms=coco_eval_transforms(64))
    (image, t), (image2, t2) = ds[0], ds[1]
    assert t["orig_size"] == (48, 64) and t["size"] == (64, 85)  # factors 85/64 (x) and 64/48 (y) differ
    torch.manual_seed(0)
    model = create_model("mask_rcnn_convnext_atto", num_classes=3, fpn_channels=32).eval()
    metrics = CocoMetrics(ds)
    batches = [(*collate_detection([ds[0], ds[1]]), 0)]  # one batch of two sizes: padded together
    evaluate(model, batches, torch.device("cpu"), evaluator=metrics)
    with torch.no_grad():
        direct = model([image, image2], out_sizes=[t["orig_size"], t2["orig_size"]])
        at_input = model([image, image2])
    mask_api = coco_backend()[2]
    for tgt, out, raw in zip((t, t2), direct, at_input):
        (h0, w0), (h, w) = tgt["orig_size"], tgt["size"]
        assert len(out["boxes"]) > 0 and out["masks"].shape[-2:] == (h0, w0)
        factor = torch.tensor([w / w0, h / h0, w / w0, h / h0], dtype=torch.float32)
        assert torch.equal(out["boxes"], raw["boxes"] / factor)  # mmdet: bboxes /= scale_factor
        res = metrics.coco.predictions[tgt["image_id"]]
        xywh = torch.tensor([r["bbox"] for r in res["bbox"]])
        assert torch.allclose(xywh[:, :2], out["boxes"][:, :2]) and \
            torch.allclose(xywh[:, :2] + xywh[:, 2:], out["boxes"][:, 2:], atol=1e-4)
        assert [r["score"] for r in res["bbox"]] == pytest.approx(out["scores"].tolist(), abs=0)
        decoded = mask_api.decode([r["segmentation"] for r in res["segm"]])  # (h0, w0, K)
        assert np.array_equal(decoded.transpose(2, 0, 1), (out["masks"][:, 0] >= 0.5).numpy())
        # the old way (paste at the network input, resize the probabilities) is another mask
        assert not np.array_equal(decoded, mask_api.decode(CocoEvaluator._encode(raw["masks"], h, w, h0, w0, mask_api)))

    # `convnext predict` feeds the same and gets the same (one image per call)
    from torchvision.io import ImageReadMode, decode_image

    from convnext.inference.loaded import Loaded, dense_transform
    from convnext.inference.predict import detect, full_masks

    loaded = Loaded(model=model, transform=dense_transform("detection", 64), classes=list(ds.classes), img_size=64,
                    weights="model", config=model.config, task="detection")
    det = detect(loaded, decode_image(str(synthetic_coco / "train2017" / "11.png"), mode=ImageReadMode.RGB))
    with torch.no_grad():
        alone = model([image], out_sizes=[t["orig_size"]])[0]
    assert det["size"] == (64, 85) and torch.equal(det["boxes"], alone["boxes"])
    assert torch.equal(det["mask_probs"], alone["masks"])
    assert torch.equal(full_masks(det["mask_probs"], (48, 64), (48, 64)), alone["masks"][:, 0] >= 0.5)
