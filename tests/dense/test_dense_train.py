"""Detection and segmentation through the one training loop, then `convnext eval` / `predict` on the result."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.train import load_config, run

FAST_DET = {"fpn_channels": 32, "rois_per_image": 32}  # narrow neck, few RoIs: a CPU step in about a second


def write_ade(root, n_train=6, n_val=2, size=(72, 88), classes=3):
    """An ADE20K-layout folder: random images, labels 0 (ignored) .. classes with blocky regions."""
    rng = np.random.default_rng(0)
    for split, n in (("training", n_train), ("validation", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for i in range(n):
            label = np.kron(rng.integers(0, classes + 1, (size[0] // 8, size[1] // 8)), np.ones((8, 8))).astype(np.uint8)
            image = (label[..., None] * 60 + rng.integers(0, 40, (*size, 3))).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.jpg")
            Image.fromarray(label).save(root / "annotations" / split / f"{i}.png")
    return root


def test_detection_runs_on_the_loop_and_eval_and_predict_reproduce_it(synthetic_coco, tmp_path, capsys):
    out = tmp_path / "det"
    metrics = run(load_config("coco_detection", data=str(synthetic_coco), model="mask_rcnn_convnext_atto",
                              model_overrides=FAST_DET, img_size=64, epochs=1, batch_size=2, num_workers=0,
                              threads=1, progress=False, output=str(out)))
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("bbox_AP", "bbox_AP50", "bbox_ARl", "segm_AP", "segm_AR100"):
        assert key in saved and (saved[key] == -1 or 0 <= saved[key] <= 100), key
    assert saved["task"] == "detection" and saved["primary_metric"] == "bbox_AP" and metrics["epochs"] == 1
    assert (out / "curves.png").is_file() and (out / "checkpoint-best.pt").is_file()
    ckpt = torch.load(out / "checkpoint-best.pt", weights_only=True)
    assert ckpt["task"] == "detection" and ckpt["labels"] == ["dog", "cat", "bird"]
    # Layer-wise decay of the official detection mapping: the stem trains slowest, the heads at x1.
    scales = {g["layer_id"]: g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]}
    assert scales[0] == pytest.approx(0.95 ** (3 + 6 // 3 + 1)) and max(scales.values()) == 1.0
    capsys.readouterr()

    js = tmp_path / "eval.json"
    assert main(["eval", "--checkpoint", str(out / "checkpoint-best.pt"), "--data", str(synthetic_coco),
                 "--json", str(js), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "bbox" in printed and "segm" in printed
    assert json.loads(js.read_text())["bbox_AP"] == pytest.approx(saved["bbox_AP"])

    assert main(["export", "--checkpoint", str(out / "checkpoint-best.pt"), "--format", "onnx",
                 str(tmp_path / "det.onnx")]) == 2
    assert "detectors cannot be exported yet" in capsys.readouterr().err

    png, pj = tmp_path / "pred.png", tmp_path / "pred.json"
    image = synthetic_coco / "train2017" / "11.png"
    assert main(["predict", "--checkpoint", str(out / "checkpoint-best.pt"), str(image), "--output", str(png),
                 "--json", str(pj), "--score-thresh", "0"]) == 0
    assert Image.open(png).size == Image.open(image).size
    res = json.loads(pj.read_text())
    assert res["task"] == "detection" and all(d["label"] in ("dog", "cat", "bird") for d in res["detections"])


def test_segmentation_runs_on_the_loop_and_eval_and_predict_reproduce_it(tmp_path, capsys):
    data = write_ade(tmp_path / "ade")
    out = tmp_path / "seg"
    run(load_config("ade20k_segmentation", data=str(data), model="upernet_convnext_atto",
                    model_overrides={"channels": 32, "aux_channels": 16}, img_size=64, epochs=1, batch_size=2,
                    num_workers=0, threads=1, progress=False, output=str(out)))
    saved = json.loads((out / "metrics.json").read_text())
    assert 0 <= saved["mIoU"] <= 100 and 0 <= saved["aAcc"] <= 100 and saved["task"] == "segmentation"
    assert set(saved["per_class"]["IoU"]) == {"0", "1", "2"}  # reduce-zero-label: labels 1..3 -> 3 classes
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint-last.pt"), "--data", str(data), "--no-progress"]) == 0
    assert f"mIoU {saved['mIoU']:.2f}" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(out / "checkpoint-last.pt"), "--data", str(data), "--multi-scale",
                 "--no-progress"]) == 0
    assert "mIoU" in capsys.readouterr().out

    png = tmp_path / "seg.png"
    assert main(["predict", "--checkpoint", str(out / "checkpoint-last.pt"),
                 str(data / "images" / "validation" / "0.jpg"), "--output", str(png)]) == 0
    assert Image.open(png).size == (88, 72)
    (tmp_path / "afile").write_text("x")
    assert main(["predict", "--checkpoint", str(out / "checkpoint-last.pt"),
                 str(data / "images" / "validation" / "0.jpg"), "--output", str(tmp_path / "afile" / "x.png")]) == 2
    assert "--output" in capsys.readouterr().err

    # ONNX export of the trained UperNet, checked against PyTorch with onnxruntime (at 192: see docs/dense.md).
    onnx = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(out / "checkpoint-last.pt"), "--format", "onnx", str(onnx)]) == 0
    printed = capsys.readouterr().out
    assert "192, 192" in printed and "max |logits - PyTorch|" in printed and onnx.is_file()


def test_task_is_implied_by_the_model_and_a_classifier_is_refused_for_detection(synthetic_coco, tmp_path, capsys):
    assert main(["train", "--task", "detection", "--data", str(synthetic_coco), "--model", "convnext_atto",
                 "--output", str(tmp_path / "x")]) == 2
    assert "is a classification model" in capsys.readouterr().err
    from convnext.train.cli import _default_recipe

    assert _default_recipe({"model": "cascade_mask_rcnn_convnext_tiny", "data": "x"}) == "coco_detection"
    assert _default_recipe({"model": "upernet_convnext_atto", "data": "x"}) == "ade20k_segmentation"
    assert _default_recipe({}) == "digits"


def test_segmentation_param_groups_follow_the_stage_wise_mapping():
    import convnext
    from convnext.dense.tasks import SegmentationTask

    with torch.device("meta"):
        model = convnext.create_model("upernet_convnext_tiny", num_classes=150)
    cfg = load_config("ade20k_upernet_convnext_tiny")
    groups = SegmentationTask().param_groups(model, cfg)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["backbone.downsample_layers.0.0.weight"]["lr_scale"] == pytest.approx(0.9 ** 7)
    assert by_name["backbone.stages.2.8.pwconv1.weight"]["lr_scale"] == pytest.approx(0.9 ** 4)
    assert by_name["backbone.stages.2.8.pwconv1.bias"]["weight_decay"] == 0.0
    assert all(g["lr_scale"] == 1.0 for n, g in by_name.items() if not n.startswith("backbone."))
