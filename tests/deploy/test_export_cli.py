"""`convnext export --format openvino | int8` and `--dtype` on predict: the CLI surface of convnext.deploy."""
import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.models import create_model

CLASSES = ["cat", "dog", "ship"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "atto3.pth"
    torch.save(create_model("convnext_atto", num_classes=3).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    g = torch.Generator().manual_seed(0)
    for c in CLASSES:
        (root / c).mkdir()
        for i in range(4):
            pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(pixels).save(root / c / f"{i}.jpg")
    return root


def test_export_openvino_cli(ckpt, tmp_path, capsys):
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    out = tmp_path / "m.xml"
    rc = main(["export", "convnext_atto", str(out), "--checkpoint", str(ckpt), "--format", "openvino",
               "--img-size", "32"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "openvino" in text and "max |logits - PyTorch|" in text and (tmp_path / "m.bin").exists()
    from convnext.deploy.runtimes import read_openvino_meta

    assert read_openvino_meta(out)["preprocessing"]["mean"] == pytest.approx([0.485, 0.456, 0.406])


def test_export_int8_measures_on_the_data(ckpt, images, tmp_path):
    pytest.importorskip("torchao")
    from convnext.data.transforms import eval_transform
    from convnext.deploy.int8 import export_int8, format_int8_report, load_int8

    model = create_model("convnext_atto", num_classes=3)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    r = export_int8(model.eval(), tmp_path / "q.pt2", data=images, transform=eval_transform(32), img_size=32,
                    classes=CLASSES, calib_images=6, eval_images=6, batch_size=4, compile=False)
    assert r["held_out"] and r["calibration_images"] == 6 and r["eval_images"] == 6
    assert r["fp32_top1"] is not None and 0 <= r["int8_top1"] <= 100  # folder names are the classes: top-1
    assert 0 <= r["top1_agreement"] <= 1 and r["int8_img_per_s"] > 0
    text = format_int8_report(r)
    assert "change" in text and "LayerNorm, GELU" in text and "every Linear (pwconv1, pwconv2, head)" in text
    q, meta = load_int8(tmp_path / "q.pt2", compile=False)
    assert "calibrated on 6 images" in meta["quantization"] and meta["classes"] == ""  # export_int8 got no classes
    r = export_int8(model.eval(), tmp_path / "q2.pt2", data=images, transform=eval_transform(32), img_size=32,
                    classes=None, calib_images=20, eval_images=4, batch_size=4, compile=False)
    assert not r["held_out"]  # too few images: compared on the calibration ones
    # no class names, but as many class folders as classes: labelled in folder order, as `convnext eval` does
    assert r["labels_from"] == "folder order" and r["fp32_top1"] is not None
    assert "sorted class-folder order" in format_int8_report(r)


def test_int8_calibration_labels_by_name_then_folder_order_else_none(images, tmp_path):
    from convnext.deploy.int8 import _labelled_images

    paths, labels, source = _labelled_images(images, ["ship", "cat", "dog"], 3)  # the model's own order
    assert source == "class names" and len(paths) == 12
    assert all(["ship", "cat", "dog"][y] == p.parent.name for p, y in zip(paths, labels))
    paths, labels, source = _labelled_images(images, ["n01", "n02", "n03"], 3)  # names unlike the folders
    assert source == "folder order" and all(CLASSES[y] == p.parent.name for p, y in zip(paths, labels))
    assert _labelled_images(images, None, 5)[1:] == (None, None)  # 3 folders, 5 classes: agreement only
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (8, 8)).save(flat / "a.jpg")
    assert _labelled_images(flat, None, 1)[1:] == (None, None)  # images not in class folders


def test_export_int8_cli_errors(ckpt, tmp_path, capsys):
    rc = main(["export", "convnext_atto", str(tmp_path / "q.pt2"), "--checkpoint", str(ckpt), "--format", "int8",
               "--img-size", "32"])
    assert rc == 2 and "--calib-data" in capsys.readouterr().err
    rc = main(["export", "convnext_atto", str(tmp_path / "m.onnx"), "--checkpoint", str(ckpt), "--format", "onnx",
               "--int8-convs"])
    assert rc == 2 and "--int8-convs applies to --format int8 only" in capsys.readouterr().err


def test_predict_says_which_path_ran(ckpt, images, capsys):
    img = str(images / "cat" / "0.jpg")
    assert main(["predict", img, "--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "32"]) == 0
    from convnext.deploy.features import cpu_features

    err = capsys.readouterr().err  # auto says so where it changes what runs (a CPU with native bf16)
    assert ("CPU inference: bf16" in err) == cpu_features().native_bf16
    assert main(["predict", img, "--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "32",
                 "--dtype", "fp32"]) == 0
    assert "CPU inference: fp32" in capsys.readouterr().err
    assert main(["predict", img, "--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "32",
                 "--dtype", "bf16"]) == 0
    assert "CPU inference: bf16" in capsys.readouterr().err
