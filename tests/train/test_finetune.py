"""Fine-tuning from the command line: --finetune FILE / --pretrained with the small-data recipe."""
import json

import numpy as np
import torch
from PIL import Image

from convnext.cli import main
from convnext.train import load_config, run

TINY = {"stem_patch_size": 1, "depths": [1, 1], "dims": [8, 16]}


def _folder(root):
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("val", 4)):
        for cls in ("ants", "bees"):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / split / cls / f"{i}.png")
    return root


def test_finetune_small_recipe_says_what_it_loaded_and_reinitialises_the_head(tmp_path, capsys):
    run(load_config("digits", model_overrides=TINY, train_subset=64, epochs=1, num_workers=0, threads=1,
                    progress=False, output=str(tmp_path / "pre"), adapt=False))
    data = _folder(tmp_path / "d")
    capsys.readouterr()
    assert main(["train", "--recipe", "finetune_small", "--model", "convnext_atto", "--model-overrides",
                 json.dumps(TINY), "--finetune", str(tmp_path / "pre" / "checkpoint-last.pt"), "--data", str(data),
                 "--img-size", "8", "--epochs", "1", "--output", str(tmp_path / "ft"), "--no-progress",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "--finetune: loaded" in out and "re-initialised" in out and "adapted: batch_size 128 -> " in out
    ckpt = torch.load(tmp_path / "ft" / "checkpoint-last.pt", weights_only=True)
    cfg = ckpt["train_config"]
    assert cfg["recipe"] == "finetune_small" and cfg["pretrained"] is False and cfg["layer_decay"] == 0.7
    assert ckpt["model"]["head.weight"].shape == (2, 16)
    assert len({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]}) > 2  # layer-wise decay


def test_pretrained_offline_says_how_to_pass_a_local_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONVNEXT_NO_DOWNLOAD", "1")
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    data = _folder(tmp_path / "d")
    for model, named in (("convnext_tiny", "convnext_tiny"), ("convnext_atto", "no official pretrained weights")):
        assert main(["train", "--recipe", "finetune_small", "--model", model, "--data", str(data), "--img-size", "32",
                     "--output", str(tmp_path / model), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("convnext train: error:") and "--finetune PATH" in err and named in err
