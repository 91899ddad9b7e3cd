"""Detection and segmentation through the one training loop, then `convnext eval` / `predict` on the result."""
import json
import re

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
    printed = capsys.readouterr().out
    # 500 warm-up steps of a 2-step run: shortened (to 10% of the run) and said.
    assert "adapted: warmup_steps 500 -> 0: the run has about 2 steps" in printed
    assert "lr: 0.0001 x 2/16 = 1.25e-05 (linear scaling rule" in printed
    saved = json.loads((out / "metrics.json").read_text())
    for key in ("bbox_AP", "bbox_AP50", "bbox_ARl", "segm_AP", "segm_AR100"):
        assert key in saved and (saved[key] != saved[key] or 0 <= saved[key] <= 100), key  # NaN: undefined
    assert saved["task"] == "detection" and saved["primary_metric"] == "bbox_AP" and metrics["epochs"] == 1
    assert (out / "curves.png").is_file() and (out / "checkpoint-best.pt").is_file()
    best = torch.load(out / "checkpoint-best.pt", weights_only=True)
    assert best["task"] == "detection" and best["labels"] == ["dog", "cat", "bird"]
    assert "optimizer" not in best and "rng" not in best  # the weights it reports, not the resumable state
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=True)
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
    assert set(saved["per_class"]["IoU"]) == {"1", "2", "3"}  # 3 classes named by their values on disk, 1..3
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "checkpoint-last.pt"), "--data", str(data), "--no-progress"]) == 0
    printed = re.search(r"mIoU (\d+\.\d+)", capsys.readouterr().out)  # eval runs at its own thread count:
    assert printed and float(printed[1]) == pytest.approx(saved["mIoU"], abs=0.011)  # not the same float bits
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


SEG_TINY = dict(model="upernet_convnext_atto", model_overrides={"channels": 16, "aux_channels": 8}, img_size=32,
                epochs=2, batch_size=2, num_workers=0, threads=1, progress=False, seed=1, eval_every=0, adapt=False)


@pytest.fixture(scope="module")
def seg_full_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    data = write_ade(root / "ade")
    run(load_config("ade20k_segmentation", data=str(data), output=str(root / "full"), **SEG_TINY))
    return data, root / "full" / "checkpoint-last.pt"


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_batchnorm_model_resumes_bit_identically_after_ctrl_c_or_sigterm(seg_full_run, tmp_path, monkeypatch, signum,
                                                                         signal_after_loss, all_tensors):
    """UperNet's BatchNorm statistics move in every forward: the save is the last step boundary's, buffers included."""
    from convnext.dense.tasks import SegmentationTask

    data, full = seg_full_run
    signal_after_loss(SegmentationTask, signum, at_call=5)  # after the forward of batch 2 of epoch 2
    cfg = dict(data=str(data), output=str(tmp_path / "cut"), **SEG_TINY)
    with pytest.raises(KeyboardInterrupt):
        run(load_config("ade20k_segmentation", **cfg))
    monkeypatch.undo()
    cut = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)
    assert (cut["epoch"], cut["batch_in_epoch"], cut["step"]) == (1, 1, 4)
    run(load_config("ade20k_segmentation", resume="auto", **cfg))
    a, b = all_tensors(full), all_tensors(tmp_path / "cut" / "checkpoint-last.pt")
    bn = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert len(bn) > 10 and a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
