"""`convnext.inference`: one `load` for every task, `predict` fed exactly what `eval` feeds the network,
predictions as files, outputs that never overwrite, imports that point down."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli import main

from .conftest import FAST_SEG, dense_checkpoint


def _fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          timeout=300).stdout.strip()


def _classifier(path, labels=("a", "b"), img_size=32):
    from convnext.models import config_to_dict, create_model

    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=len(labels))
    torch.save({"model": model.state_dict(), "model_config": config_to_dict(model.config), "labels": list(labels),
                "train_config": {"img_size": img_size}}, path)
    return path


def _image(path, seed=0, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _class_folder(root, classes=("a", "b"), n=3):
    for c in classes:
        for i in range(n):
            _image(root / "val" / c / f"{i}.png", seed=hash((c, i)) % 1000)
    return root


# ----------------------------------------------------------------------------------- imports
def test_a_classifier_built_run_and_predicted_imports_no_detection_stack(tmp_path):
    ckpt = _classifier(tmp_path / "c.pt")
    img = _image(tmp_path / "x.png")
    code = (f"import sys, torch, convnext; m = convnext.create_model('convnext_atto', num_classes=2).eval(); "
            f"m(torch.randn(1, 3, 32, 32)); convnext.predict(convnext.load({str(ckpt)!r}), [{str(img)!r}]); "
            "bad = sorted(k for k in sys.modules if k.startswith(('convnext.dense', 'torchvision.models.detection'))); "
            "print(bad)")
    assert _fresh(code) == "[]"


@pytest.mark.parametrize("command", ["eval", "predict", "export", "train", "convert"])
def test_subcommand_help_imports_no_torch(command):
    code = (f"import sys\nfrom convnext.cli import main\ntry:\n    main([{command!r}, '--help'])\n"
            "except SystemExit:\n    pass\nprint('torch' in sys.modules)")
    assert _fresh(code).splitlines()[-1] == "False"


def test_registry_names_no_module_above_it():
    import inspect

    import convnext.models.registry as registry

    source = inspect.getsource(registry)
    assert "convnext.dense" not in source and "import_module" not in source
    from convnext.models import get_spec

    assert get_spec("upernet_convnext_atto").task == "segmentation"  # provided from the top layer
    with pytest.raises(KeyError, match="Did you mean: upernet_convnext_atto"):
        get_spec("upernet_convnext_atoo")


# ------------------------------------------------------------------------ eval == predict
def test_segmentation_eval_saves_the_label_maps_predict_writes(seg_setup, tmp_path, capsys):
    data, ckpt = seg_setup
    preds = tmp_path / "preds"
    js = tmp_path / "seg.json"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--save-predictions", str(preds),
                 "--no-progress", "--num-workers", "0", "--json", str(js)]) == 0
    assert set(json.loads(js.read_text())["per_class"]["IoU"]) == {"1", "2", "3"}  # values on disk, not value - 1
    for img in sorted((data / "images" / "validation").iterdir()):
        mine = tmp_path / f"{img.stem}-predict.png"
        assert main(["predict", "--checkpoint", str(ckpt), str(img), "--label-map", str(mine)]) == 0
        a, b = np.array(Image.open(preds / f"{img.stem}.png")), np.array(Image.open(mine))
        assert a.shape == b.shape == np.array(Image.open(data / "annotations" / "validation" / f"{img.stem}.png")).shape
        assert (a == b).mean() >= 0.999
        assert set(np.unique(a)) <= {1, 2, 3}  # the annotation files' values (class i on disk is i + 1)
    out = capsys.readouterr().out
    assert "1" in out and "0.00%" not in out


def test_segmentation_predict_feeds_the_dataset_eval_transform(seg_setup):
    from convnext.dense.segmentation_data import SegmentationFolder
    from convnext.inference import load, read_rgb_tensor

    data, ckpt = seg_setup
    loaded = load(ckpt)
    assert loaded.task == "segmentation" and not loaded.model.training  # BatchNorm in eval mode
    ds = SegmentationFolder(data, "validation", crop_size=loaded.img_size)
    path = ds.samples[0][0]
    assert torch.equal(loaded.transform(read_rgb_tensor(path, "segmentation").float()), ds[0][0])


def test_detection_eval_saves_the_detections_predict_prints(det_setup, tmp_path):
    data, ckpt = det_setup
    preds = tmp_path / "preds"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--save-predictions", str(preds),
                 "--no-progress", "--num-workers", "0"]) == 0
    saved = json.loads((preds / "detections.json").read_text())
    assert saved and {"image_id", "category_id", "bbox", "score", "segmentation"} <= set(saved[0])
    assert isinstance(saved[0]["segmentation"]["counts"], str) and {r["category_id"] for r in saved} <= {3, 7}
    cat_of = {1: 3, 2: 7}  # labels by sorted category id: dog (3) 1, cat (7) 2
    for image_id in (1, 2):
        out = tmp_path / f"{image_id}.json"
        assert main(["predict", "--checkpoint", str(ckpt), str(data / "val2017" / f"{image_id}.png"),
                     "--json", str(out), "--score-thresh", "0"]) == 0
        mine = json.loads(out.read_text())["detections"]
        theirs = [r for r in saved if r["image_id"] == image_id]
        assert len(mine) == len(theirs) > 0
        for m, t in zip(mine, theirs):
            x, y, w, h = t["bbox"]
            assert cat_of[m["label_index"]] == t["category_id"] and abs(m["score"] - t["score"]) < 1e-3
            assert _iou(m["box"], [x, y, x + w, y + h]) > 0.98


def _iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 1.0


def test_streamed_label_map_equals_the_full_resize():
    import torch.nn.functional as F

    from convnext.inference import label_map_to_full

    torch.manual_seed(0)
    scores = torch.randn(1, 7, 23, 31)
    full = F.interpolate(scores, size=(101, 67), mode="bilinear", align_corners=False)[0].argmax(0)
    for band in (1, 5, None):
        got = label_map_to_full(scores, (101, 67), band=band)
        assert (got == full).float().mean() >= 0.9999
    assert torch.equal(label_map_to_full(scores, (101, 67), band=1), label_map_to_full(scores, (101, 67), band=64))


def test_classification_eval_and_predict_use_one_resolution_rule(tmp_path):
    from convnext.inference import load, resolve_resolution

    assert resolve_resolution(224, 0.95, None, None) == (224, 0.95)
    assert resolve_resolution(224, 0.95, 224, None) == (224, 0.95)  # the checkpoint's own size keeps its crop
    assert resolve_resolution(224, 0.95, 288, None) == (288, None)
    loaded = load(_classifier(tmp_path / "c.pt"), img_size=32)
    assert loaded.img_size == 32 and loaded.task == "classification"


# ------------------------------------------------------------------------- files out
def test_classification_eval_json_has_per_class_accuracy_and_hides_top5(tmp_path, capsys):
    ckpt = _classifier(tmp_path / "c.pt")
    data = _class_folder(tmp_path / "data")
    js, preds = tmp_path / "r.json", tmp_path / "preds"
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(js), "--no-progress",
                 "--num-workers", "0", "--save-predictions", str(preds)]) == 0
    out = capsys.readouterr().out
    assert "top-1" in out and "top-5" not in out  # 2 classes: top-5 is always 100%
    res = json.loads(js.read_text())
    acc = res["per_class"]["accuracy"]
    assert set(acc) == {"a", "b"} and sum(acc.values()) / 2 == pytest.approx(res["top1"])
    rows = json.loads((preds / "predictions.json").read_text())
    assert len(rows) == 6 and rows[0]["image"].endswith("0.png") and len(rows[0]["topk"]) == 2
    # not overwritten without --force
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(js)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(data), "--json", str(js), "--force",
                 "--no-progress", "--num-workers", "0"]) == 0


def test_predict_json_of_images_with_one_name_in_two_folders(tmp_path, capsys):
    ckpt = _classifier(tmp_path / "c.pt")
    a, b = _image(tmp_path / "x" / "photo.png", 1), _image(tmp_path / "y" / "photo.png", 2)
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(ckpt), str(a), str(b), "--json", str(out)]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.json")) == ["x/photo.json", "y/photo.json"]
    assert json.loads((out / "y" / "photo.json").read_text())["image"] == str(b)
    assert main(["predict", "--checkpoint", str(ckpt), str(a), str(b), "--json", str(out)]) == 2  # no overwrite
    assert "already exists; pass --force" in capsys.readouterr().err


def test_chance_note_only_near_guessing():
    from convnext.outputs import chance_note

    note = chance_note(10.0, 10, 80, 224)  # a CIFAR-10 checkpoint run at the wrong resolution: guessing
    assert note.startswith("note: top-1 10.00% is near chance (10.0% for 10 classes)") and "224px" in note
    assert chance_note(21.0, 10, 80) and not chance_note(23.0, 10, 80)  # 1.5 x 10% + 2 sd (6.7 points) on 80
    assert chance_note(0.4, 1000, 256) and not chance_note(80.0, 1000, 256)  # ImageNet, 256 images
    assert chance_note(50.0, 2, 1000) is None and chance_note(10.0, 10, 0) is None  # binary; no images


def test_output_names_never_collide():
    from convnext.outputs import output_names

    assert output_names(["d/x/photo.jpg", "d/y/photo.jpg"], ".png") == ["x/photo.png", "y/photo.png"]
    assert output_names(["d/a.jpg", "d/a.png"], ".json") == ["a.jpg.json", "a.png.json"]
    assert output_names(["d/a.jpg", "d/a.jpg"], ".png") == ["a.jpg.png", "a.jpg-1.png"]  # one file given twice


def test_onnx_export_carries_classes_and_preprocessing(tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ckpt = _classifier(tmp_path / "c.pt", labels=("cat", "dog"))
    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx", str(out)]) == 0
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["classes"]) == ["cat", "dog"] and meta["task"] == "classification"
    pre = json.loads(meta["preprocessing"])
    assert pre["center_crop"] == 32 and pre["resize_shorter_side"] == int(32 / 0.875)


def test_segmentation_export_is_the_whole_upernet(tmp_path, capsys):
    ckpt = dense_checkpoint(tmp_path / "s.pt", "upernet_convnext_atto", ["0", "1"], 64, FAST_SEG)
    out = tmp_path / "s.pt.ts"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "torchscript", str(out)]) == 0
    graph = torch.jit.load(str(out))
    assert tuple(graph(torch.randn(1, 3, 192, 192)).shape) == (1, 2, 192, 192)  # a class map, not pooled features


def test_eval_transform_is_torchvisions_pixel_for_pixel():
    from torchvision import transforms as T

    from convnext.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, to_rgb

    def reference(size, crop):
        crop = crop if crop is not None else (1.0 if size >= 384 else 0.875)
        geo = ([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC)] if crop == 1 else
               [T.Resize(int(size / crop), interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size)])
        return T.Compose([T.Lambda(to_rgb), *geo, T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    rng = np.random.default_rng(0)
    for hw in [(40, 48), (48, 40), (17, 500), (10, 10), (33, 77)]:
        img = Image.fromarray(rng.integers(0, 255, (*hw, 3), dtype=np.uint8))
        for size, crop in [(224, None), (32, None), (64, 1.0), (384, None), (224, 0.95)]:
            assert torch.equal(eval_transform(size, crop)(img), reference(size, crop)(img)), (hw, size, crop)


def test_openmmlab_files_are_read_as_their_task(det_setup, tmp_path, capsys):
    """An mmdet file is evaluated as a detector and an mmseg file exported as the whole UperNet (issue 14/16)."""
    data, ckpt = det_setup
    mmdet = tmp_path / "det_mmdet.pth"
    assert main(["convert", str(ckpt), str(mmdet), "--to", "mmdet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(mmdet), "--data", str(data), "--no-progress", "--num-workers", "0",
                 "--model", "mask_rcnn_convnext_atto"]) == 0
    out, err = capsys.readouterr()
    assert "mmdet" in err and "bbox" in out
    seg = dense_checkpoint(tmp_path / "s.pt", "upernet_convnext_atto", ["0", "1"], 64, FAST_SEG)
    mmseg = tmp_path / "s_mmseg.pth"
    assert main(["convert", str(seg), str(mmseg), "--to", "mmseg"]) == 0
    out_ts = tmp_path / "s.ts"
    assert main(["export", "upernet_convnext_atto", "--checkpoint", str(mmseg), "--format", "torchscript",
                 str(out_ts)]) == 0
    assert "mmseg" in capsys.readouterr().err
    assert tuple(torch.jit.load(str(out_ts))(torch.randn(1, 3, 192, 192)).shape) == (1, 2, 192, 192)


@pytest.mark.slow
def test_upernet_predict_of_a_12_megapixel_photo_stays_under_2_gb(tmp_path):
    """80 classes, 4000x3000: the class map is made a band of rows at a time (issue 16: 7.35 GB before)."""
    import resource

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(
        tmp_path / "photo.jpg", quality=90)
    ckpt = dense_checkpoint(tmp_path / "u.pt", "upernet_convnext_atto", [f"c{i}" for i in range(80)], 512, {})
    subprocess.run([sys.executable, "-c", "import sys; from convnext.cli import main; sys.exit(main(sys.argv[1:]))",
                    "predict", "--checkpoint", str(ckpt),
                    str(tmp_path / "photo.jpg"), "--output", str(tmp_path / "o.png"), "--label-map",
                    str(tmp_path / "l.png"), "--threads", "1"], check=True, capture_output=True, timeout=1800)
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # kB on Linux
    assert peak_gb < 2.0
    assert np.array(Image.open(tmp_path / "l.png")).shape == (3000, 4000)
