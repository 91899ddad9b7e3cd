"""Bad input gives one line, `convnext <cmd>: error: ...`, exit status 2, and never a traceback.

One table for every command. To add a case, append a `Case`: `argv` items are formatted with
`{tmp}` (a fresh folder), `{ckpt}` (a small convnext_atto checkpoint, 3 classes, trained-at 64px)
and `{img}` (a small RGB image); `setup(tmp)` prepares files first (and may `pytest.skip`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from convnext.cli import main


@dataclass
class Case:
    argv: list[str]
    expect: str  # a substring of the error line (name the flag or file)
    setup: Callable[[Path], None] | None = None
    id: str | None = None


def _atto_state(num_classes: int = 3) -> dict:
    from convnext.models import create_model

    return create_model("convnext_atto", num_classes=num_classes).state_dict()


def _file(name: str, content: bytes = b"x") -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).parent.mkdir(parents=True, exist_ok=True) or (tmp / name).write_bytes(content)


def _dir(name: str) -> Callable[[Path], None]:
    return lambda tmp: (tmp / name).mkdir(parents=True, exist_ok=True)


def _checkpoint(name: str, edit: Callable[[dict], dict]) -> Callable[[Path], None]:
    """A checkpoint `name` made from the base convnext_atto one by `edit(checkpoint dict)`."""
    def setup(tmp: Path) -> None:
        from convnext.models import config_to_dict, create_model

        model = create_model("convnext_atto", num_classes=3)
        ckpt = {"model": model.state_dict(), "model_config": config_to_dict(model.config)}
        torch.save(edit(ckpt), tmp / name)
    return setup


def _no_root(tmp: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root may write anywhere: permissions cannot be tested")
    (tmp / "ro").mkdir()
    os.chmod(tmp / "ro", 0o555)


def _gpu_absent(tmp: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")


def _drop(key: str) -> Callable[[dict], dict]:
    return lambda c: {**c, "model": {k: v for k, v in c["model"].items() if k != key}}


CASES = [
    # --- convert: outputs
    Case(["convert", "{ckpt}", "{tmp}/outdir"], "is a directory; expected a file path", _dir("outdir"), "convert-dir"),
    Case(["convert", "{ckpt}", "{tmp}/exists.pt"], "already exists; pass --force", _file("exists.pt"),
         "convert-exists"),
    Case(["convert", "{ckpt}", "{tmp}/afile/out.pt"], "afile is a file, not a folder", _file("afile"),
         "convert-under-file"),
    Case(["convert", "{ckpt}", "{tmp}/ro/out.pt"], "is not writable", _no_root, "convert-not-writable"),
    Case(["convert", "{ckpt}", "{tmp}/hf", "--to", "hf"], "is a file; expected a directory", _file("hf"),
         "convert-hf-onto-file"),
    # --- unreadable / unusable checkpoints
    Case(["convert", "{tmp}/garbage.pt", "{tmp}/o.pt"], "garbage.pt: not a PyTorch checkpoint",
         _file("garbage.pt", b"hello world, not a checkpoint"), "garbage-checkpoint"),
    Case(["predict", "--checkpoint", "{tmp}/none.pt", "{img}"], "checkpoint file not found", None, "missing-ckpt"),
    Case(["predict", "--checkpoint", "{tmp}/empty", "{img}"], "contains none of model.safetensors",
         _dir("empty"), "ckpt-dir-without-weights"),
    Case(["predict", "--checkpoint", "https://example.com/m.pth", "{img}"],
         "https://example.com/m.pth: URLs are not supported; download the file first", None, "ckpt-url"),
    Case(["predict", "--checkpoint", "{tmp}/neg.pt", "{img}"], "neg.pt: model_config does not describe a model",
         _checkpoint("neg.pt", lambda c: {**c, "model_config": {**c["model_config"], "dims": [-40, 80, 160, 320]}}),
         "negative-dims"),
    Case(["predict", "--checkpoint", "{tmp}/holes.pt", "{img}"],
         "missing from the checkpoint (1): stages.1.0.gamma", _checkpoint("holes.pt", _drop("stages.1.0.gamma")),
         "missing-keys"),
    Case(["predict", "--checkpoint", "{tmp}/wide.pt", "--model", "convnext_atto", "{img}"],
         "head.weight: checkpoint (3, 999) vs model (3, 320)",
         _checkpoint("wide.pt", lambda c: {"model": {**c["model"], "head.weight": torch.zeros(3, 999)}}),
         "head-input-width"),
    Case(["eval", "--checkpoint", "{tmp}/none.pt", "--data", "digits"], "checkpoint file not found", None,
         "eval-missing-ckpt"),
    # --- export
    Case(["export", "--checkpoint", "{ckpt}", "--format", "onnx", "{tmp}/odir"], "is a directory", _dir("odir"),
         "export-dir"),
    Case(["export", "--checkpoint", "{ckpt}", "--format", "onnx", "{tmp}/e.onnx"], "already exists; pass --force",
         _file("e.onnx"), "export-exists"),
    Case(["export", "--checkpoint", "{ckpt}", "--format", "onnx", "{tmp}/m.onnx", "--img-size", "-32"],
         "--img-size -32: must be a positive multiple of 32", None, "export-negative-size"),
    Case(["export", "convnext_atoo", "--checkpoint", "{ckpt}", "--format", "onnx", "{tmp}/m.onnx"],
         "unknown model 'convnext_atoo'. Did you mean: convnext_atto", None, "export-unknown-model"),
    # --- predict: flags and images
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--img-size", "0"],
         "--img-size 0: must be a positive multiple of 32", None, "predict-zero-size"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--threads", "-1"], "--threads -1: must be >= 1", None,
         "predict-threads"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--batch-size", "0"], "--batch-size 0: must be >= 1", None,
         "predict-batch"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--device", "tpu"], "--device tpu: unknown device", None,
         "predict-tpu"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--device", "cuda"], "--device cuda: no CUDA GPU",
         _gpu_absent, "predict-cuda-without-gpu"),
    Case(["predict", "--checkpoint", "{ckpt}", "https://example.com/cat.jpg"],
         "https://example.com/cat.jpg: URLs are not supported; download the file first", None, "predict-url"),
    Case(["predict", "--checkpoint", "{ckpt}", "{tmp}/noimages"], "noimages: folder holds no images",
         _dir("noimages"), "predict-empty-folder"),
    Case(["predict", "--checkpoint", "{ckpt}", "{tmp}/missing.jpg"], "image not found: ", None, "predict-missing"),
    Case(["predict", "--checkpoint", "{ckpt}", "--weights", "model", "--ema", "{img}"],
         "--ema contradicts --weights model", None, "predict-ema-contradiction"),
    Case(["predict", "--checkpoint", "{ckpt}", "--weights", "ema", "{img}"], "no EMA weights", None,
         "predict-no-ema"),
    # --- eval
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--threads", "-1"], "--threads -1: must be >= 1",
         None, "eval-threads"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--device", "tpu", "--no-progress"],
         "--device tpu: unknown device", None, "eval-tpu"),
    # --- outputs of predict / eval: never overwrite a file they did not create, one line for a bad place
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--img-size", "-64"],
         "--img-size -64: must be a positive multiple of 32", None, "predict-negative-size"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--json", "{tmp}/r.json"], "--json", _file("r.json"),
         "predict-json-exists"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--output", "{tmp}/o.png"],
         "o.png: already exists; pass --force", _file("o.png"), "predict-output-exists"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--output", "{tmp}/noext"],
         "noext: has no extension; expected .png", None, "predict-output-no-extension"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--output", "{ckpt}"], "is a .pt file; expected .png",
         None, "predict-output-onto-checkpoint"),
    Case(["predict", "--checkpoint", "{ckpt}", "{img}", "--label-map", "{tmp}/l.png"],
         "--output and --label-map apply to detection/segmentation", None, "predict-label-map-classifier"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--json", "{ckpt}"],
         "already exists; pass --force", None, "eval-json-onto-checkpoint"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--json", "{tmp}/afile/r.json"],
         "afile is a file, not a folder", _file("afile"), "eval-json-under-file"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--save-predictions", "{tmp}/afile"],
         "is a file; expected a directory", _file("afile"), "eval-save-predictions-onto-file"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--batch-size", "-1"],
         "--batch-size -1: must be >= 1", None, "eval-negative-batch"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--num-workers", "-1"],
         "--num-workers -1: must be >= 0", None, "eval-negative-workers"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--img-size", "0"],
         "--img-size 0: must be a positive", None, "eval-zero-size"),
    Case(["eval", "--checkpoint", "{ckpt}", "--data", "digits", "--multi-scale", "--no-progress"],
         "--multi-scale applies to segmentation checkpoints only", None, "eval-multiscale-classifier"),
    # --- train (the range checks of every option: tests/train/test_hardening.py)
    Case(["train", "--device", "tpu", "--output", "{tmp}/r"], "--device tpu: unknown device", None, "train-tpu"),
    Case(["train", "--resume", "{ckpt}", "--output", "{tmp}/r"], "training checkpoint lacks", None,
         "train-resume-incomplete"),
    Case(["train", "--finetune", "{tmp}/missing.pt", "--output", "{tmp}/r"], "--finetune", None, "train-finetune-missing"),
    Case(["train", "--output", "{tmp}/afile"], "is a file, not a folder", _file("afile"), "train-output-file"),
    Case(["train", "--output", "{tmp}/afile/sub"], "which is a file", _file("afile"), "train-output-under-file"),
    Case(["train", "--task", "detection", "--data", "{tmp}/nothing", "--model", "mask_rcnn_convnext_atto",
          "--output", "{tmp}/r"], "COCO annotation file not found", None, "train-detection-no-coco"),
    Case(["train", "--task", "classification", "--model", "mask_rcnn_convnext_atto", "--output", "{tmp}/r"],
         "is a detection model, but --task is classification", None, "train-task-mismatch"),
]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("base")
    from convnext.models import config_to_dict, create_model

    model = create_model("convnext_atto", num_classes=3)
    torch.save({"format": "convnext-train-v1", "model": model.state_dict(), "labels": ["a", "b", "c"],
                "model_config": config_to_dict(model.config), "train_config": {"img_size": 64}}, root / "ckpt.pt")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / "img.png")
    return {"ckpt": root / "ckpt.pt", "img": root / "img.png"}


@pytest.mark.parametrize("case", CASES, ids=[c.id or " ".join(c.argv[:2]) for c in CASES])
def test_one_line_error(case, tmp_path, base, capsys):
    if case.setup is not None:
        case.setup(tmp_path)
    argv = [a.format(tmp=tmp_path, **base) for a in case.argv]
    rc = main(argv)
    _, err = capsys.readouterr()
    lines = err.splitlines()
    command = argv[0]
    assert rc == 2, err
    errors = [line for line in lines if line.startswith(f"convnext {command}: error: ")]
    assert len(errors) == 1 and case.expect in errors[0], err
    assert "Traceback" not in err
    assert all(not line.startswith("  ") for line in lines), err  # no continuation lines
