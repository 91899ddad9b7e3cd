"""`convnext convert / export / predict` through `convnext.cli.main` (and once through the console script)."""
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli import main
from convnext.data import eval_transform
from convnext import create_model  # builds and loads (convnext.models.create_model only builds)
from convnext.models import config_to_dict
from convnext.weights import load_state_dict_file, read_labels, save_state_dict

from .conftest import randomize_

timm = pytest.importorskip("timm")


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "photo.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def labelled_checkpoint(tmp_path):
    """A 3-class training-style checkpoint whose head strongly prefers class 2 ("eel")."""
    model = randomize_(create_model("convnext_atto", num_classes=3))
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 0.0, 30.0]))
    path = tmp_path / "run" / "best.pt"
    path.parent.mkdir()
    torch.save({"format": "convnext-train-v1", "model": model.state_dict(), "labels": ["cat", "dog", "eel"],
                "model_config": config_to_dict(model.config), "model_name": "convnext_atto", "epoch": 1}, path)
    return path, model


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_convert_timm_to_official_and_back(tmp_path, capsys):
    peer = randomize_(timm.create_model("convnext_atto"))
    torch.save({"state_dict": peer.state_dict()}, tmp_path / "timm.pth")
    rc, out, _ = run(capsys, "convert", tmp_path / "timm.pth", tmp_path / "ours.safetensors")
    assert rc == 0 and "timm layout, 128 tensors, convnext_atto (1000 classes)" in out
    ours = create_model("convnext_atto", checkpoint=tmp_path / "ours.safetensors").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert (ours(x) - peer(x)).abs().max() <= 1e-4

    rc, out, _ = run(capsys, "convert", tmp_path / "ours.safetensors", tmp_path / "back.pt", "--to", "timm",
                     "--model", "convnext_atto")
    assert rc == 0 and "verified against --model" in out
    fresh = timm.create_model("convnext_atto")
    fresh.load_state_dict(torch.load(tmp_path / "back.pt", weights_only=True), strict=True)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), peer(x))

    rc, _, err = run(capsys, "convert", tmp_path / "ours.safetensors", tmp_path / "x.pt", "--model", "convnext_femto")
    assert rc == 2 and "does not fit" in err and "holds convnext_atto" in err
    rc, _, err = run(capsys, "convert", tmp_path / "ours.safetensors", tmp_path / "tv.pt", "--to", "torchvision")
    assert rc == 0 and sorted(load_state_dict_file(tmp_path / "tv.pt"))[0].startswith("classifier.")


def test_convert_keeps_labels_and_ema(tmp_path, capsys, labelled_checkpoint):
    path, model = labelled_checkpoint
    ckpt = torch.load(path, weights_only=True)
    ema = randomize_(create_model("convnext_atto", num_classes=3))
    torch.save({**ckpt, "model_ema": ema.state_dict()}, path)
    rc, out, err = run(capsys, "convert", path, tmp_path / "ema.safetensors", "--ema")
    assert rc == 0 and "ema weights" in out and "--ema is deprecated; use --weights ema" in err
    rc, out, _ = run(capsys, "convert", path, tmp_path / "auto.safetensors")  # auto: EMA present, so EMA
    assert rc == 0 and "ema weights" in out
    assert torch.equal(load_state_dict_file(tmp_path / "auto.safetensors")["head.weight"], ema.head.weight)
    assert read_labels(tmp_path / "ema.safetensors") == ["cat", "dog", "eel"]
    sd = load_state_dict_file(tmp_path / "ema.safetensors")
    assert torch.equal(sd["head.weight"], ema.head.weight)


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_matches_pytorch(tmp_path, capsys, fmt, labelled_checkpoint):
    path, model = labelled_checkpoint
    out_file = tmp_path / f"model.{'onnx' if fmt == 'onnx' else 'pt'}"
    rc, out, _ = run(capsys, "export", "convnext_atto", "--checkpoint", path, "--format", fmt, out_file,
                     "--img-size", 64)
    assert rc == 0 and out_file.exists() and "max |logits - PyTorch|" in out
    x = torch.randn(3, 3, 64, 64)  # another batch size than the export's: the batch axis is dynamic
    with torch.no_grad():
        ref = model.eval()(x)
    if fmt == "onnx":
        ort = pytest.importorskip("onnxruntime")
        session = ort.InferenceSession(str(out_file), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    else:
        with torch.no_grad():
            got = torch.jit.load(str(out_file))(x)
    assert (got - ref).abs().max().item() <= 1e-4


def test_predict_uses_stored_labels_and_paper_preprocessing(capsys, image, labelled_checkpoint):
    path, model = labelled_checkpoint
    rc, out, _ = run(capsys, "predict", "--checkpoint", path, image, "--topk", 3)
    assert rc == 0
    lines = out.strip().splitlines()
    assert lines[0] == str(image)
    rows = [re.match(r"\s+([\d.]+)%\s+(\w+) \((\d)\)", line).groups() for line in lines[1:]]
    assert [r[1] for r in rows][0] == "eel" and len(rows) == 3
    with torch.no_grad():
        expected = model.eval()(eval_transform(224)(Image.open(image)).unsqueeze(0)).softmax(-1)[0]
    for pct, _, idx in rows:
        assert abs(float(pct) / 100 - expected[int(idx)].item()) < 6e-5  # printed with 2 decimals


def test_predict_imagenet_names_for_1000_classes(tmp_path, capsys, image):
    model = create_model("convnext_atto")
    with torch.no_grad():
        model.head.bias[281] = 50.0  # ImageNet-1K class 281 is "tabby"
    save_state_dict(model.state_dict(), tmp_path / "in1k.safetensors")
    rc, out, _ = run(capsys, "predict", "--checkpoint", tmp_path / "in1k.safetensors", image, image, "--topk", 1)
    assert rc == 0 and out.count("tabby (281)") == 2


def test_predict_takes_the_resolution_of_an_official_file_name(tmp_path, capsys, image):
    # An official 384px fine-tuned file (recognised by its name in the pretrained registry) is
    # evaluated at 384 with no crop, as the paper does, unless --img-size says otherwise.
    model = create_model("convnext_atto").eval()
    path = tmp_path / "convnext_base_22k_1k_384.pth"
    torch.save({"model": model.state_dict()}, path)
    rc, out, err = run(capsys, "predict", "--checkpoint", path, image, "--topk", 1)
    assert rc == 0 and "resolution 384px (from the pretrained registry" in err
    pct = float(re.search(r"([\d.]+)%", out).group(1))
    with torch.no_grad():
        expected = model(eval_transform(384, crop_pct=1.0)(Image.open(image)).unsqueeze(0)).softmax(-1).max().item()
    assert abs(pct / 100 - expected) < 6e-5
    rc, _, err = run(capsys, "predict", "--checkpoint", path, image, "--img-size", 224)
    assert rc == 0 and "resolution" not in err


def test_predict_errors_are_clear(tmp_path, capsys, image, labelled_checkpoint):
    path, _ = labelled_checkpoint
    (tmp_path / "broken.jpg").write_text("not an image")
    cases = [
        (["predict", "--checkpoint", path, tmp_path / "missing.jpg"], "image not found: .*missing.jpg"),
        (["predict", "--checkpoint", tmp_path / "none.pt", image], "checkpoint file not found: .*none.pt"),
        (["predict", "--checkpoint", image, image], "photo.jpg: not a PyTorch checkpoint or a safetensors file"),
        (["predict", "--checkpoint", path, "--model", "convnext_tiny", image], "does not fit"),
        (["predict", "--checkpoint", path, "--model", "convnext_tinyy", image], "Did you mean: convnext_tiny"),
        (["export", "convnext_atto", "--checkpoint", path, "--format", "onnx", tmp_path / "m.onnx",
          "--img-size", 100], "--img-size 100: must be a positive multiple of 32"),
    ]
    for argv, message in cases:
        rc, out, err = run(capsys, *argv)
        assert rc == 2 and re.search(message, err), (argv, err)
        assert "Traceback" not in err
    # An unreadable image is reported on its own line; exit status 1 (the others would be classified).
    rc, out, err = run(capsys, "predict", "--checkpoint", path, tmp_path / "broken.jpg")
    assert rc == 1 and "broken.jpg: not a readable image" in err and out == ""


def test_console_script(tmp_path, image, labelled_checkpoint):
    exe = shutil.which("convnext") or pytest.skip("console script not installed")
    path, _ = labelled_checkpoint
    proc = subprocess.run([exe, "predict", "--checkpoint", str(path), str(image), "--topk", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"100\.00%\s+eel \(2\)", proc.stdout)
    proc = subprocess.run([sys.executable, "-m", "convnext", "convert", str(image), str(tmp_path / "x.pt")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a PyTorch checkpoint or a safetensors file" in proc.stderr


def test_convert_to_hf_directory_opens_with_from_pretrained(tmp_path, capsys, labelled_checkpoint):
    transformers = pytest.importorskip("transformers")
    path, model = labelled_checkpoint
    rc, out, _ = run(capsys, "convert", path, tmp_path / "hf_model", "--to", "hf")
    assert rc == 0 and (tmp_path / "hf_model" / "config.json").exists()
    peer = transformers.ConvNextForImageClassification.from_pretrained(tmp_path / "hf_model").eval()
    assert peer.config.id2label == {0: "cat", 1: "dog", 2: "eel"}
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (peer(pixel_values=x).logits - model.eval()(x)).abs().max() <= 1e-4
    # ...and the directory converts back.
    rc, out, _ = run(capsys, "convert", tmp_path / "hf_model", tmp_path / "again.pt", "--model", "convnext_atto")
    assert rc == 0 and "hf layout" in out
