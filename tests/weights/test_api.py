"""`convnext.load` / `convnext.predict` and what the CLI commands built on them promise:
one weights rule, bounded memory, metadata kept through convert, per-image errors, escaped labels."""
import re
import time

import numpy as np
import pytest
import torch
from PIL import Image

import convnext
from convnext.cli import main
from convnext.data import eval_transform
from convnext.models import config_to_dict, create_model, get_spec
from convnext.weights import CheckpointError, read_metadata, save_state_dict
from convnext.weights.io import reported_weights

from .conftest import train_checkpoint


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def _image(path, seed=0, size=(40, 48)):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("extra, expected", [
    ({}, "ema"),  # no claim: EMA when present, as the paper reports
    ({"metrics": {"evaluated": "model"}}, "model"),  # older checkpoints: what training evaluated
    ({"reported_weights": "model", "metrics": {"evaluated": "ema"}}, "model"),  # the explicit key wins
    ({"reported_weights": "ema"}, "ema"),
])
def test_weights_rule(tmp_path, extra, expected):
    path = tmp_path / "run" / "checkpoint-best.pt"
    raw, avg = train_checkpoint(path, **extra)
    assert reported_weights(torch.load(path, weights_only=True)) == expected
    loaded = convnext.load(path)
    assert loaded.weights == expected
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), (avg if expected == "ema" else raw).eval()(x))
    assert convnext.load(path, weights="model").weights == "model"


def test_predict_and_export_follow_the_weights_rule(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoint-best.pt"
    train_checkpoint(path, reported_weights="model")
    img = _image(tmp_path / "a.png")
    rc, out, err = run(capsys, "predict", "--checkpoint", path, img, "--topk", 1)
    assert rc == 0 and "model weights" in err and "cat (0)" in out
    rc, out, err = run(capsys, "predict", "--checkpoint", path, img, "--topk", 1, "--ema")
    assert rc == 0 and "eel (2)" in out and "--ema is deprecated" in err
    rc, out, _ = run(capsys, "export", tmp_path / "m.pt", "--checkpoint", path, "--format", "torchscript",
                     "--weights", "ema", "--img-size", 32)
    assert rc == 0 and "ema weights" in out


def test_weights_ema_without_ema_is_an_error(tmp_path):
    path = tmp_path / "noema.pt"
    train_checkpoint(path, ema=False, reported_weights="ema")  # a wrong claim is ignored by auto
    assert convnext.load(path).weights == "model"
    with pytest.raises(CheckpointError, match="no EMA weights"):
        convnext.load(path, weights="ema")


def test_huge_claimed_architecture_fails_before_allocating(tmp_path):
    # A 15 MB atto checkpoint whose model_config claims ConvNeXt-XL widths and 100k classes (about
    # 1.5 GB of parameters): the meta-device check must refuse it before building anything real.
    model = create_model("convnext_atto", num_classes=3)
    claimed = config_to_dict(get_spec("convnext_xlarge").config) | {"num_classes": 100_000}
    path = tmp_path / "claims_xl.pt"
    torch.save({"model": model.state_dict(), "model_config": claimed}, path)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"does not fit.*shape mismatch"):
        convnext.load(path)
    assert time.perf_counter() - t0 < 2.0


def test_api_load_and_predict_match_the_cli(tmp_path, capsys):
    path = tmp_path / "run" / "best.pt"
    _, avg = train_checkpoint(path, img_size=64, crop_pct=1.0)
    loaded = convnext.load(path)
    assert (loaded.img_size, loaded.classes, loaded.weights) == (64, ["cat", "dog", "eel"], "ema")
    assert not loaded.model.training and loaded.config.dims == (40, 80, 160, 320)
    a, b = _image(tmp_path / "a.png", 1), _image(tmp_path / "b.png", 2, (70, 50))
    tensor = loaded.transform(Image.open(b))
    got = convnext.predict(loaded, [a, Image.open(b), tensor], topk=2, batch_size=2)
    assert len(got) == 3 and got[1] == got[2] and [len(r) for r in got] == [2, 2, 2]
    with torch.no_grad():
        ref = avg.eval()(eval_transform(64, crop_pct=1.0)(Image.open(a))[None]).softmax(-1)[0]
    assert got[0][0][0] == "eel" and got[0][0][1] == pytest.approx(ref.max().item(), abs=1e-6)
    assert convnext.predict(path, a, topk=1) == [got[0][:1]]  # a path target and a single image
    rc, out, _ = run(capsys, "predict", "--checkpoint", path, a, "--topk", 1)
    assert rc == 0 and f"{got[0][0][1]:7.2%}  eel (2)" in out
    with pytest.raises(convnext.errors.DataError, match="image not found"):
        convnext.predict(loaded, [tmp_path / "nope.png"])


def test_predict_streams_batches_and_reports_bad_images(tmp_path, capsys, monkeypatch):
    path = tmp_path / "run" / "best.pt"
    train_checkpoint(path)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        _image(folder / f"{i}.png", i)
    big = _image(tmp_path / "big.png", 9, (64, 64))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # 64*64 > 2x the limit: a decompression bomb

    loaded = convnext.load(path)
    sizes = []
    loaded.model.register_forward_hook(lambda m, i, o: sizes.append(i[0].shape[0]))
    results = list(convnext.api.iter_predictions(loaded, [folder / "0.png", big, folder / "1.png"] * 2, batch_size=2))
    assert max(sizes) <= 2 and sum(sizes) == 4  # never more than one batch in memory
    assert [r[2] is not None for r in results] == [False, True, False] * 2
    assert "decompression-bomb limit" in results[1][2]

    # CLI: a folder expands to its images; a missing and a bomb image are reported, the rest classified.
    rc, out, err = run(capsys, "predict", "--checkpoint", path, folder, tmp_path / "missing.png", big,
                       "--batch-size", 2, "--topk", 1)
    assert rc == 1
    assert sum(line.endswith(".png") for line in out.splitlines()) == 5
    assert "image not found: " in err and "missing.png" in err and "big.png: refused" in err
    assert "2 of 7 image(s) could not be read" in err and "Traceback" not in err


def test_predict_escapes_labels_from_the_checkpoint(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    evil = ["\x1b[2J\x1b[Hcat", "dog\n    99.99%  forged (7)", "eel"]
    train_checkpoint(path, labels=evil)
    rc, out, _ = run(capsys, "predict", "--checkpoint", path, _image(tmp_path / "a.png"), "--topk", 3)
    assert rc == 0 and "\x1b" not in out and "forged (7)\n" not in out
    assert "\\x1b[2J\\x1b[Hcat" in out and "dog\\n    99.99%  forged (7)" in out
    assert len(out.splitlines()) == 4  # the path and three classes: no forged line


def test_convert_keeps_resolution_and_labels_for_predict(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoint-best.pt"
    _, avg = train_checkpoint(path, img_size=96, crop_pct=1.0)
    rc, out, _ = run(capsys, "convert", path, tmp_path / "model.safetensors")
    assert rc == 0 and "ema weights" in out
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["labels"] == ["cat", "dog", "eel"] and meta["train_config"]["img_size"] == 96
    assert meta["resolution"] == {"img_size": 96, "crop_pct": 1.0}
    loaded = convnext.load(tmp_path / "model.safetensors")
    assert (loaded.img_size, loaded.crop_pct, loaded.classes) == (96, 1.0, ["cat", "dog", "eel"])
    img = _image(tmp_path / "a.png")
    rc, out, err = run(capsys, "predict", "--checkpoint", tmp_path / "model.safetensors", img, "--topk", 1)
    assert rc == 0 and "resolution 96px" in err and "eel (2)" in out
    with torch.no_grad():
        ref = avg.eval()(eval_transform(96, crop_pct=1.0)(Image.open(img))[None]).softmax(-1).max().item()
    assert f"{ref:7.2%}" in out
    # An official 384px file converted under another name keeps its registry resolution.
    official = tmp_path / "convnext_base_22k_1k_384.pth"
    torch.save({"model": create_model("convnext_atto").state_dict()}, official)
    assert run(capsys, "convert", official, tmp_path / "renamed.safetensors")[0] == 0
    assert convnext.load(tmp_path / "renamed.safetensors").img_size == 384


def test_convert_verifies_what_it_writes(tmp_path, capsys):
    # model_config says femto, the tensors are atto: written as is, no reader could load it.
    model = create_model("convnext_atto", num_classes=3)
    bad = tmp_path / "mislabelled.pt"
    torch.save({"model": model.state_dict(), "model_config": config_to_dict(get_spec("convnext_femto").config)}, bad)
    rc, _, err = run(capsys, "convert", bad, tmp_path / "out.safetensors")
    assert rc == 2 and "does not fit" in err and "shape mismatch" in err
    assert not (tmp_path / "out.safetensors").exists()
    # timm's convnext_atto stores its MLP as 1x1 convs: --no-conv-mlp would not load into it.
    good = tmp_path / "atto.safetensors"
    save_state_dict(model.state_dict(), good)
    rc, _, err = run(capsys, "convert", good, tmp_path / "timm.pt", "--to", "timm", "--no-conv-mlp")
    assert rc == 2 and "do not load into timm's convnext_atto" in err and "mlp.fc1.weight" in err
    assert not (tmp_path / "timm.pt").exists()
    rc, out, _ = run(capsys, "convert", good, tmp_path / "timm.pt", "--to", "timm")
    assert rc == 0 and "loads into timm's convnext_atto" in out


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_export_without_model_name_at_the_training_resolution(tmp_path, capsys):
    path = tmp_path / "run" / "checkpoint-best.pt"
    train_checkpoint(path, img_size=64)
    out_file = tmp_path / "model.pt"
    rc, out, err = run(capsys, "export", "--checkpoint", path, "--format", "torchscript", out_file)
    assert rc == 0 and "input (B, 3, 64, 64)" in out and "64px (from the checkpoint's training config)" in err
    rc, _, err = run(capsys, "export", "--checkpoint", path, "--format", "torchscript", out_file)
    assert rc == 2 and "already exists; pass --force" in err
    rc, out, _ = run(capsys, "export", "--checkpoint", path, "--format", "torchscript", out_file, "--force",
                     "--img-size", 96)
    assert rc == 0 and "input (B, 3, 96, 96)" in out


def test_eval_reads_hf_directories_reports_skipped_images_and_strict_errors(tmp_path, capsys):
    path = tmp_path / "run" / "best.pt"
    train_checkpoint(path, img_size=32)
    for cls in ("cat", "dog", "eel"):
        (tmp_path / "data" / "val" / cls).mkdir(parents=True)
        _image(tmp_path / "data" / "val" / cls / "0.png", len(cls))
    (tmp_path / "data" / "val" / "dog" / "broken.png").write_bytes(b"not a png")
    rc, out, err = run(capsys, "eval", "--checkpoint", path, "--data", tmp_path / "data", "--no-progress",
                       "--num-workers", 0)
    assert rc == 0 and "(ema weights)" in out and "3 images" in out
    assert "warning: 1 unreadable image(s) skipped" in err
    rc, _, err = run(capsys, "eval", "--checkpoint", path, "--data", tmp_path / "data", "--no-progress",
                     "--num-workers", 1, "--strict-images")
    # One error line; on a CPU with native bf16 the line saying which inference path runs comes before it.
    lines = [line for line in err.splitlines() if not line.startswith("CPU inference:")]
    assert rc == 2 and len(lines) == 1 and "broken.png" in lines[0] and "Traceback" not in err
    # An HF from_pretrained directory (what `convert --to hf` writes) evaluates like any checkpoint.
    assert run(capsys, "convert", path, tmp_path / "hf", "--to", "hf")[0] == 0
    rc, out, err = run(capsys, "eval", "--checkpoint", tmp_path / "hf", "--data", tmp_path / "data",
                       "--no-progress", "--num-workers", 0, "--img-size", 32)
    assert rc == 0 and "3 images" in out, err


def test_predict_pretrained_offline_says_how_to_pass_a_file(tmp_path, capsys):
    rc, _, err = run(capsys, "predict", "--model", "convnext_tiny", "--pretrained", _image(tmp_path / "a.png"))
    assert rc == 2 and err.count("\n") == 1
    assert "convnext_tiny_1k_224_ema.pth" in err and "--checkpoint PATH" in err
    rc, _, err = run(capsys, "predict", "--model", "convnext_tiny", "--pretrained", "--pretrained-tag",
                     "in22k_ft_in1k_384", tmp_path / "a.png")
    assert rc == 2 and "convnext_tiny_22k_1k_384.pth" in err
    rc, _, err = run(capsys, "predict", "--pretrained", tmp_path / "a.png")
    assert rc == 2 and "--pretrained: name the model too" in err


def test_load_report_is_one_line_summary(tmp_path):
    path = tmp_path / "run" / "best.pt"
    train_checkpoint(path)
    report = convnext.load(path).report
    assert re.fullmatch(r"loaded 128 tensors from .*best\.pt \(official layout, ema weights\)", str(report))
    fresh = create_model("convnext_atto", num_classes=5)
    from convnext.weights import load_checkpoint

    report = load_checkpoint(fresh, path, reinit_head=True)
    assert "\n" not in str(report) and "head (head.weight, head.bias) dropped and re-initialised" in str(report)


def test_eval_says_a_missing_split_before_building_the_cpu_path(tmp_path, capsys, monkeypatch):
    """On a native-bf16 CPU the eval path is compiled first (tens of seconds): a bad --data must not wait for it."""
    import convnext.deploy.cpu as cpu

    def not_yet(*args, **kwargs):
        raise AssertionError("the CPU inference path was built before the data was checked")

    monkeypatch.setattr(cpu, "model_for_dtype", not_yet)
    path = tmp_path / "w.pth"
    torch.save(create_model("convnext_atto", num_classes=3).state_dict(), path)
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    rc, _, err = run(capsys, "eval", "--checkpoint", path, "--model", "convnext_atto", "--data", tmp_path / "data",
                     "--no-progress")
    assert rc == 2 and "missing val split" in err and err.count("\n") == 1, err


def test_eval_compiles_the_cpu_path_only_for_large_folders(tmp_path, capsys, monkeypatch):
    import convnext.deploy.cpu as cpu
    import convnext.inference.cli as inference_cli

    asked = []

    def record(model, *args, compile=False, **kwargs):
        asked.append(compile)
        return model, ""

    monkeypatch.setattr(cpu, "model_for_dtype", record)
    path = tmp_path / "w.pth"
    torch.save(create_model("convnext_atto", num_classes=2).state_dict(), path)
    for cls in ("a", "b"):
        (tmp_path / "data" / "val" / cls).mkdir(parents=True)
        _image(tmp_path / "data" / "val" / cls / "0.png")
    argv = ["eval", "--checkpoint", path, "--model", "convnext_atto", "--data", tmp_path / "data", "--no-progress",
            "--num-workers", 0, "--img-size", 32]
    assert run(capsys, *argv)[0] == 0
    monkeypatch.setattr(inference_cli, "_COMPILE_MIN_IMAGES", 2)
    assert run(capsys, *argv)[0] == 0
    assert asked == [False, True]  # 2 images: not worth a compile; at the threshold: inductor is timed too
    import convnext.data.datasets as datasets

    listed = []
    real = datasets.list_images
    monkeypatch.setattr(datasets, "list_images", lambda folder, *a, **k: listed.append(folder) or real(folder, *a, **k))
    assert run(capsys, *argv)[0] == 0
    assert len(listed) == 2  # each class folder once: the val split is built once, for its size and the eval
