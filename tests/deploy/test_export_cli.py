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
    from convnext.deploy.int8 import _labelled_images, export_int8, format_int8_report, load_int8

    model = create_model("convnext_atto", num_classes=3)
    model.load_state_dict(torch.load(ckpt, weights_only=True))
    r = export_int8(model.eval(), tmp_path / "q.pt2", data=images, transform=eval_transform(32), img_size=32,
                    classes=CLASSES, calib_images=6, eval_images=6, batch_size=4, compile=False)
    assert r["held_out"] and r["calibration_images"] == 6 and r["eval_images"] == 6
    assert r["fp32_top1"] is not None and 0 <= r["int8_top1"] <= 100  # folder names are the classes: top-1
    held_out = _labelled_images(images, CLASSES, 3)[0][6:12]  # the 6 images after the 6 calibrated on
    assert r["eval_classes"] == len({p.parent.name for p in held_out})  # classes present, as `convnext eval` counts
    assert 0 <= r["top1_agreement"] <= 1 and r["int8_img_per_s"] > 0
    text = format_int8_report(r)
    assert "change" in text and "LayerNorm, GELU" in text and "every Linear (pwconv1, pwconv2, head)" in text
    from convnext.deploy import amx_gelu

    assert r["fused_gelu"] == (2 + 2 + 6 + 2 if amx_gelu.available() else 0)  # atto: one per block
    assert ("in our AMX int8 kernel" in text) == bool(r["fused_gelu"])
    assert r["fused_norms"] == (2 + 6 + 2 if amx_gelu.available() else 0)  # atto: stages 2-4 (80-320 channels)
    assert ("one pass of our AVX512 kernel" in text) == bool(r["fused_norms"])
    # pwconv2 with 160 / 320 outputs (stages 3-4) in our kernel, each with its block's residual add in the store
    assert r["fused_residuals"] == (6 + 2 if amx_gelu.available() else 0)
    assert ("residual add in the store" in text) == bool(r["fused_residuals"])
    assert not r["bf16_stream"]  # atto's first block (40 channels) is not ours: its stream stays as autocast has it
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


def test_the_int8_program_runs_in_predict_and_eval(images, tmp_path, capsys, monkeypatch):
    """What `export --format int8` writes, `predict` and `eval` run: class names and preprocessing from
    the file, the resolution fixed, CPU only; other commands say what the file is (not "corrupted")."""
    pytest.importorskip("torchao")
    import functools
    import json

    import convnext.deploy.int8 as int8

    load, export = int8.load_int8, int8.export_int8  # not compiled here: a fast test
    monkeypatch.setattr(int8, "load_int8", lambda path, mixed_bf16=None, compile=True: load(path, mixed_bf16, False))
    monkeypatch.setattr(int8, "export_int8", functools.partial(export, compile=False))
    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=3)
    from convnext.bench.peers import _spread_scales

    _spread_scales(model, torch.Generator().manual_seed(0))  # logits far enough apart to survive int8 noise
    ckpt = tmp_path / "named.pth"
    torch.save({"model": model.state_dict(), "labels": ["ship", "cat", "dog"]}, ckpt)  # not the folders' order
    q = tmp_path / "q.pt2"
    assert main(["export", "convnext_atto", str(q), "--checkpoint", str(ckpt), "--format", "int8", "--img-size", "32",
                 "--calib-data", str(images), "--calib-images", "8", "--eval-images", "4", "--batch-size", "4"]) == 0
    capsys.readouterr()

    img = str(images / "dog" / "1.jpg")
    rc = main(["predict", img, "--checkpoint", str(q), "--topk", "3", "--json", str(tmp_path / "p.json")])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "CPU inference: int8 program (PT2E)" in err and "32px" in err
    got = {r["class"]: r["probability"] for r in json.loads((tmp_path / "p.json").read_text())["topk"]}
    assert main(["predict", img, "--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "32",
                 "--dtype", "fp32", "--topk", "3", "--json", str(tmp_path / "f.json")]) == 0
    ref = {r["class"]: r["probability"] for r in json.loads((tmp_path / "f.json").read_text())["topk"]}
    assert set(got) == {"ship", "cat", "dog"} and all(abs(got[c] - ref[c]) < 0.05 for c in ref)  # names kept
    assert main(["predict", img, "--checkpoint", str(q), "--dtype", "fp32"]) == 0
    assert "float ops in fp32" in capsys.readouterr().err

    import shutil

    data = tmp_path / "data"
    shutil.copytree(images, data / "val")
    results = {}
    for name, source in (("int8", ["--checkpoint", str(q)]),
                         ("fp32", ["--checkpoint", str(ckpt), "--model", "convnext_atto", "--img-size", "32",
                                   "--dtype", "fp32"])):
        out = tmp_path / f"{name}.json"
        rc = main(["eval", *source, "--data", str(data), "--batch-size", "5", "--num-workers", "0", "--no-progress", "--json", str(out)])
        assert rc == 0, capsys.readouterr().err
        results[name] = json.loads(out.read_text())
    assert results["int8"]["images"] == 12  # batches of 5, 5 and 2: the last one padded, not compiled anew
    assert abs(results["int8"]["top1"] - results["fp32"]["top1"]) <= 100 / 12 + 1e-6  # one image at most

    # A checkpoint without class names of a 1000-class model: the ImageNet names are defaults, not the
    # checkpoint's, so eval reads the class folders in order instead of looking for them among those names.
    plain = tmp_path / "plain.pth"
    torch.save(create_model("convnext_atto").state_dict(), plain)
    assert main(["export", "convnext_atto", str(tmp_path / "p.pt2"), "--checkpoint", str(plain), "--format", "int8",
                 "--img-size", "32", "--calib-data", str(images), "--calib-images", "4", "--eval-images", "4"]) == 0
    rc = main(["eval", "--checkpoint", str(tmp_path / "p.pt2"), "--data", str(data), "--num-workers", "0",
               "--no-progress"])
    assert rc == 0, capsys.readouterr().err

    import zipfile

    damaged = tmp_path / "damaged.pt2"  # the archive intact, its program description cut short
    with zipfile.ZipFile(q) as src, zipfile.ZipFile(damaged, "w") as dst:
        for name in src.namelist():
            chunk = src.read(name)
            dst.writestr(name, chunk[: len(chunk) // 2] if name.endswith("models/model.json") else chunk)
    for argv, words in ((["predict", img, "--checkpoint", str(q), "--img-size", "64"], "exported for 32px"),
                        (["predict", img, "--checkpoint", str(damaged)], "a torch.export program (.pt2) that does "
                                                                        "not load"),
                        (["eval", "--checkpoint", str(q), "--data", str(data), "--amp", "bf16"], "--amp bf16"),
                        (["export", str(tmp_path / "x.onnx"), "--checkpoint", str(q), "--format", "onnx"], "already an int8 program"),
                        (["convert", str(q), str(tmp_path / "x.safetensors")], "a torch.export program")):
        assert main(argv) == 2
        assert words in capsys.readouterr().err


def test_int8_model_pads_a_smaller_batch_to_a_compiled_size(tmp_path):
    pytest.importorskip("torchao")
    from convnext.deploy.int8 import load_int8, quantize_int8, save_int8

    torch.manual_seed(0)
    model = create_model("convnext_atto", num_classes=4).eval()
    save_int8(quantize_int8(model, [torch.randn(4, 3, 32, 32)], img_size=32), tmp_path / "a.pt2")
    q, _ = load_int8(tmp_path / "a.pt2", mixed_bf16=False, compile=False)
    assert (q.in_chans, q.img_size, q.num_classes) == (3, 32, 4)  # read off the program
    x = torch.randn(6, 3, 32, 32)
    full, part = q(x), q(x[:4])
    assert torch.allclose(full[:4], part, atol=1e-5) and part.shape == (4, 4)
    assert q._built == {(6, 3, 32, 32)}  # the 4 images ran as a padded batch of 6
    q(torch.randn(8, 3, 32, 32))
    assert q._built == {(6, 3, 32, 32), (8, 3, 32, 32)}  # a larger batch is its own shape
    q(x[:4])
    assert (4, 3, 32, 32) not in q._built  # its second call: still padded
    assert torch.allclose(q(x[:4]), part, atol=1e-5) and (4, 3, 32, 32) in q._built  # third: compiled
    q.eval()  # inference only: a no-op, where an exported module would raise
    with pytest.raises(RuntimeError, match="training mode"):
        q.train()


def test_int8_calibration_reads_a_dataset_roots_val_split(images, tmp_path):
    import shutil

    from convnext.deploy.int8 import _labelled_images, image_root

    root = tmp_path / "root"
    shutil.copytree(images, root / "val")
    shutil.copytree(images, root / "train")
    assert image_root(root) == root / "val" and image_root(images) == images  # class folders stay as given
    paths, labels, source = _labelled_images(image_root(root), CLASSES, 3)
    assert source == "class names" and len(paths) == 12 and all(p.parent.parent.name == "val" for p in paths)
    (root / "extra").mkdir()  # not only split folders: read as a folder of classes
    assert image_root(root) == root


def test_int8_report_flags_chance_level_fp32_accuracy():
    """A checkpoint run on images it does not fit (another resolution, class order) scores at chance in fp32 too:
    the report says so instead of printing a 0.00-point change as if all were well."""
    from convnext.deploy.int8 import format_int8_report

    r = dict(path="q.pt2", images_from="calib", calibration_images=80, eval_images=80, held_out=False, calibrate_s=1.0,
             fp32_top1=10.0, int8_top1=10.0, top1_agreement=0.99, max_abs_logit_diff=0.02, max_abs_logit=4.0,
             batch_size=16, fp32_img_per_s=100.0, fp32_path="fp32 eager", int8_img_per_s=300.0, compiled=True,
             int8_mixed_bf16=True, img_size=224, eval_classes=10)
    assert "note: fp32 top-1 10.00% is near chance (10.0% for 10 classes)" in format_int8_report(r)
    assert "224px" in format_int8_report(r)
    assert "near chance" not in format_int8_report({**r, "fp32_top1": 65.0})
    assert "near chance" not in format_int8_report({**r, "eval_classes": 2, "fp32_top1": 50.0})  # binary: no note
    assert "near chance" not in format_int8_report({k: v for k, v in r.items() if k != "eval_classes"})  # older report
