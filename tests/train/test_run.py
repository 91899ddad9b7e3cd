"""End-to-end training runs on the built-in digits with a tiny ConvNeXt (a few seconds each on a CPU)."""
import json

import pytest
import torch
import yaml

import convnext.train.trainer as trainer
from convnext.cli import main
from convnext.train import NonFiniteLossError, TrainConfig, load_config, run
from convnext.train.checkpoint import FORMAT

TINY = {"stem_patch_size": 1, "depths": [1, 1], "dims": [8, 16]}


def tiny_config(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(model_overrides=TINY, train_subset=96, batch_size=16, epochs=2, num_workers=0, threads=1,
                progress=False, output=str(tmp_path / name), seed=3, adapt=False)
    return load_config("digits", **{**base, **kw})


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_run_folder_checkpoint_and_metrics(tmp_path, capsys):
    cfg = tiny_config(tmp_path, ema=True, ema_decay=0.9)
    metrics = run(cfg)
    out = tmp_path / "run"
    for f in ("config.yaml", "metrics.json", "checkpoint-last.pt", "checkpoint-best.pt", "curves.png"):
        assert (out / f).is_file(), f
    assert any((out / "tensorboard").iterdir())
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["top1"] == metrics["top1"] and 0 <= saved["top1"] <= 100 and saved["top5"] >= saved["top1"]
    assert saved["epochs"] == 2 and saved["world_size"] == 1 and saved["train_images_per_sec"] > 0
    assert saved["best_top1"] >= saved["top1"] and saved["evaluated"] == "ema"
    assert yaml.safe_load((out / "config.yaml").read_text())["model_overrides"] == TINY

    ckpt = torch.load(out / "checkpoint-last.pt", map_location="cpu", weights_only=True)  # safe loading
    assert ckpt["format"] == FORMAT and ckpt["model_name"] == "convnext_atto"
    assert ckpt["labels"] == [str(d) for d in range(10)]
    assert ckpt["model_config"]["dims"] == [8, 16] and ckpt["model_config"]["num_classes"] == 10
    assert ckpt["train_config"]["epochs"] == 2 and ckpt["epoch"] == 2 and ckpt["step"] == 2 * (96 // 16)
    assert set(ckpt["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert "model_ema" in ckpt and not torch.equal(ckpt["model_ema"]["head.weight"], ckpt["model"]["head.weight"])
    assert "top-1" in capsys.readouterr().out

    # `convnext eval` reproduces the final evaluation (same preprocessing, EMA weights by default).
    assert main(["eval", "--checkpoint", str(out / "checkpoint-last.pt"), "--data", "digits", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"top-1 {metrics['top1']:.2f}%" in printed and "(ema weights)" in printed
    assert main(["eval", "--checkpoint", str(out / "checkpoint-last.pt"), "--data", "digits", "--weights", "model",
                 "--no-progress"]) == 0
    assert "(model weights)" in capsys.readouterr().out


@pytest.mark.parametrize("workers", [0, 2])
def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path, monkeypatch, workers, interrupt_at_step):
    # The paper's stochastic pieces stay on (RandAugment, erasing, Mixup/CutMix, drop path): every RNG is restored.
    # With worker processes the resumed epoch's batches land on other workers than before; the
    # per-image seeding of the augmentation must make that irrelevant.
    kw = dict(epochs=3, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, drop_path=0.1,
              ema=True, ema_decay=0.9, deterministic=True, num_workers=workers)
    run(tiny_config(tmp_path, "full", **kw))

    interrupt_at_step(8)  # mid-epoch 2 (6 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_config(tmp_path, "cut", **kw))
    ckpt = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 2, 8)
    monkeypatch.undo()

    metrics = run(tiny_config(tmp_path, "cut", resume="auto", **kw))
    assert metrics["epochs"] == 3
    full = _weights(tmp_path / "full" / "checkpoint-last.pt")
    resumed = _weights(tmp_path / "cut" / "checkpoint-last.pt")
    for k in full:
        assert torch.equal(full[k], resumed[k]), k
    full_ema = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model_ema"]
    resumed_ema = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)["model_ema"]
    assert all(torch.equal(full_ema[k], resumed_ema[k]) for k in full_ema)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real = trainer.train_one_epoch
    calls = []

    def patched(model, batches, ctx, step):
        calls.append(step)
        if len(calls) == 2:  # second epoch: the loss turns NaN
            loss = ctx.loss
            ctx.loss = lambda *args: loss(*args) * float("nan")
        return real(model, batches, ctx, step)

    monkeypatch.setattr(trainer, "train_one_epoch", patched)
    with pytest.raises(NonFiniteLossError, match="loss is nan.*the last good checkpoint is"):
        run(tiny_config(tmp_path))
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_cli_train_errors_are_clear(tmp_path, capsys):
    # --output: the default runs/ folder of the working directory may hold a README run already
    assert main(["train", "--data", str(tmp_path / "nope"), "--recipe", "digits", "--no-progress",
                 "--output", str(tmp_path / "w")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["train", "--model", "convnext_tinyy", "--epochs", "1", "--output", str(tmp_path / "x")]) == 2
    assert "convnext_tiny" in capsys.readouterr().err  # did-you-mean
    assert main(["train", "--model-overrides", "{bogus: 1}", "--epochs", "1", "--output", str(tmp_path / "y")]) == 2
    assert "bogus" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "missing.pt"), "--output", str(tmp_path / "z")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["train", "--list-recipes"]) == 0
    assert "in1k_convnext_tiny" in capsys.readouterr().out


def test_cli_train_flags_reach_the_config(tmp_path):
    # The same code path as `convnext train`: flags override the digits recipe.
    out = tmp_path / "cli"
    code = main(["train", "--epochs", "1", "--batch-size", "16", "--train-subset", "32", "--threads", "1",
                 "--num-workers", "0", "--model-overrides", "{depths: [1, 1], dims: [8, 16]}", "--lr", "1e-3",
                 "--drop-path", "none",
                 "--no-progress", "--output", str(out)])
    assert code == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["recipe"] == "digits" and saved["epochs"] == 1 and saved["lr"] == 1e-3
    # merged with the recipe's overrides:
    assert saved["model_overrides"] == {"stem_patch_size": 2, "depths": [1, 1], "dims": [8, 16]}
    assert saved["drop_path"] is None  # "none" sets a field to None (the recipe says 0.0)
    assert saved["hflip"] == 0.0 and saved["threads"] == 1  # recipe values not given as flags survive
    assert saved["resolved"]["effective_batch"] == 16


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_accumulation_clipping_and_grad_checkpointing(tmp_path, amp):
    cfg = tiny_config(tmp_path, amp=amp, accum_steps=2, clip_grad=1.0, grad_checkpointing=True, epochs=1,
                      layer_decay=0.8)
    metrics = run(cfg)
    ckpt = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["step"] == 96 // 16 // 2 and metrics["effective_batch"] == 32
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
    assert bool(ckpt["scaler"]) == (amp == "fp16")  # loss scaling only for fp16
    assert len({g["lr_scale"] for g in ckpt["optimizer"]["param_groups"]}) == 4  # stem, 2 stages, head


def test_resume_auto_of_a_finished_run_keeps_its_result(tmp_path):
    first = run(tiny_config(tmp_path, epochs=1))
    again = run(tiny_config(tmp_path, epochs=1, resume="auto"))
    assert again["top1"] == first["top1"] and again["epochs"] == 1


def test_finetune_from_a_training_checkpoint_reinitialises_the_head(tmp_path):
    import numpy as np
    from PIL import Image

    run(tiny_config(tmp_path, "pre", epochs=1))
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 4)):
        for cls in ("a", "b", "c"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(
                    tmp_path / "folder" / split / cls / f"{i}.png")
    # lr 0: the body must come out exactly as pre-trained, the 3-way head freshly initialised x0.001.
    pre_ckpt = str(tmp_path / "pre" / "checkpoint-last.pt")
    run(tiny_config(tmp_path, "ft", data=str(tmp_path / "folder"), finetune=pre_ckpt,
                    head_init_scale=0.001, layer_decay=0.8, lr=0.0, min_lr=0.0, epochs=1,
                    train_subset=None))
    pre, ft = _weights(tmp_path / "pre" / "checkpoint-last.pt"), _weights(tmp_path / "ft" / "checkpoint-last.pt")
    for k in pre:
        if not k.startswith("head."):
            assert torch.equal(pre[k], ft[k]), k
    assert ft["head.weight"].shape[0] == 3 and ft["head.weight"].abs().max() < 0.001
    ckpt = torch.load(tmp_path / "ft" / "checkpoint-last.pt", weights_only=True)
    assert ckpt["labels"] == ["a", "b", "c"] and ckpt["model_config"]["num_classes"] == 3


def test_eval_maps_class_names_to_the_checkpoint_labels(tmp_path, capsys):
    import shutil

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("a", "b", "c"):
            (tmp_path / "folder" / split / cls).mkdir(parents=True)
            for i in range(8):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / "folder" / split / cls / f"{i}.png")
    run(tiny_config(tmp_path, data=str(tmp_path / "folder"), train_subset=None, epochs=1))
    ckpt = str(tmp_path / "run" / "checkpoint-last.pt")
    # An eval folder holding only classes b and c: its label 0 ("b") must be scored as the model's class 1.
    shutil.copytree(tmp_path / "folder" / "val" / "b", tmp_path / "bc" / "val" / "b")
    shutil.copytree(tmp_path / "folder" / "val" / "c", tmp_path / "bc" / "val" / "c")
    from convnext.data import build_dataset, eval_transform
    from convnext.train.evaluate import evaluate_checkpoint, load_trained_model

    full = evaluate_checkpoint(ckpt, str(tmp_path / "folder"), num_workers=0, progress=False)
    part = evaluate_checkpoint(ckpt, str(tmp_path / "bc"), num_workers=0, progress=False)
    model, _ = load_trained_model(ckpt)
    ds = build_dataset(str(tmp_path / "folder"), "val", eval_transform(16, crop_pct=1.0))
    with torch.no_grad():
        preds = model.eval()(torch.stack([ds[i][0] for i in range(len(ds))])).argmax(1)
    targets = torch.tensor([t for _, t in ds.samples])
    assert full["top1"] == pytest.approx(100 * (preds == targets).float().mean().item())
    keep = targets > 0
    assert part["images"] == 16
    assert part["top1"] == pytest.approx(100 * (preds[keep] == targets[keep]).float().mean().item())
    (tmp_path / "bad" / "val" / "zebra").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "val" / "zebra" / "0.png")
    assert main(["eval", "--checkpoint", ckpt, "--data", str(tmp_path / "bad"), "--no-progress"]) == 2
    assert "zebra" in capsys.readouterr().err


@pytest.mark.slow  # about 2 min of inductor compilation; tests/models/test_convnext.py::test_no_graph_breaks stays fast
def test_compiled_training_matches_eager(tmp_path):
    # --compile trains the same model: same steps, (nearly) the same weights; checkpoints keep plain keys.
    from torch._dynamo.utils import counters

    eager = run(tiny_config(tmp_path, name="eager", epochs=1, drop_path=0.0))
    counters.clear()
    compiled = run(tiny_config(tmp_path, name="compiled", epochs=1, drop_path=0.0, compile=True))
    assert counters["stats"]["unique_graphs"] > 0  # dynamo really compiled the training step
    a, b = _weights(tmp_path / "eager" / "checkpoint-last.pt"), _weights(tmp_path / "compiled" / "checkpoint-last.pt")
    assert a.keys() == b.keys() and not any("_orig_mod" in k for k in b)
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-3), k
    assert compiled["top1"] == pytest.approx(eager["top1"], abs=2.0)


class _Payload:
    """Unpickling this would create `marker` (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_and_eval_refuse_code_carrying_or_foreign_files(tmp_path, capsys):
    import pickle

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": _Payload(marker)}, protocol=2))
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint")
    for argv in (["train", "--resume", str(evil), "--output", str(tmp_path / "r")],
                 ["eval", "--checkpoint", str(evil), "--data", "digits"]):
        assert main(argv) == 2
        assert "refused to load" in capsys.readouterr().err
    assert not marker.exists()
    assert main(["eval", "--checkpoint", str(notes), "--data", "digits"]) == 2
    assert "not a PyTorch checkpoint or a safetensors file" in capsys.readouterr().err


def test_deterministic_makes_the_indexing_backward_of_the_detection_losses_exact():
    """torchvision's Mask R-CNN losses index `box_regression[pos, labels]` and `mask_logits[arange, labels]`:
    their backward is index_put_(accumulate=True), whose CPU kernel adds in a varying order on several
    threads. `--deterministic` (torch.use_deterministic_algorithms) makes it exact; `run` restores the flag."""
    threads, was = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 91, 4, generator=g)
    pos, labels = torch.randint(0, 64, (200_000,), generator=g), torch.randint(0, 91, (200_000,), generator=g)
    w = torch.randn(200_000, 4, generator=g)

    def grad():
        xx = x.clone().requires_grad_()
        (xx[pos, labels] * w).sum().backward()
        return xx.grad

    try:
        torch.set_num_threads(2)
        torch.use_deterministic_algorithms(True)
        first = grad()
        assert all(torch.equal(first, grad()) for _ in range(4))
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)
