"""Nothing lost, nothing silently wrong: run folders, resume, interrupts, validation, adapted defaults."""
import json
import os
import stat

import pytest
import torch
import yaml

import convnext.train.trainer as trainer
from convnext.cli import main
from convnext.errors import ConfigError, UserError
from convnext.train import load_config, run
from convnext.train.adapt import adapt_config
from convnext.train.distributed import SeededSamples, TrainSampler
from convnext.train.rundir import RunLock
from convnext.train.tasks import ClassificationTask

TINY = {"stem_patch_size": 1, "depths": [1, 1], "dims": [8, 16]}


def cfg(tmp_path, name="run", **kw):
    base = dict(model_overrides=TINY, train_subset=96, batch_size=16, epochs=2, num_workers=0, threads=1,
                progress=False, output=str(tmp_path / name), seed=3, adapt=False)
    return load_config("digits", **{**base, **kw})


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


STOCHASTIC = dict(epochs=2, randaug="rand-m9-mstd0.5-inc1", reprob=0.25, mixup=0.8, cutmix=1.0, drop_path=0.1,
                  deterministic=True)


@pytest.mark.parametrize("where", ["loss", "data"])
def test_interrupt_inside_a_batch_resumes_bit_identically(tmp_path, monkeypatch, where):
    """Ctrl-C after the batch was loaded, augmented and mixed (inside forward), or while loading it."""
    run(cfg(tmp_path, "full", **STOCHASTIC))
    calls = {"n": 0}
    if where == "loss":
        real = ClassificationTask.loss

        def patched(self, *args):
            out = real(self, *args)  # Mixup, drop path: the random numbers of this batch are drawn
            calls["n"] += 1
            if calls["n"] == 9:  # batch 3 of epoch 2 (6 batches per epoch)
                raise KeyboardInterrupt
            return out

        monkeypatch.setattr(ClassificationTask, "loss", patched)
    else:
        real = SeededSamples.__getitem__

        def patched(self, index):
            calls["n"] += 1
            if calls["n"] == 16 * 8 + 5:  # inside the 9th batch, after 5 images were augmented
                raise KeyboardInterrupt
            return real(self, index)

        monkeypatch.setattr(SeededSamples, "__getitem__", patched)
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path, "cut", **STOCHASTIC))
    ckpt = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 2, 8)
    monkeypatch.undo()
    run(cfg(tmp_path, "cut", resume="auto", **STOCHASTIC))
    full, resumed = _weights(tmp_path / "full" / "checkpoint-last.pt"), _weights(tmp_path / "cut" / "checkpoint-last.pt")
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_a_second_run_into_a_run_folder_is_refused_and_overwrite_replaces_it(tmp_path):
    run(cfg(tmp_path, epochs=1))
    best = (tmp_path / "run" / "checkpoint-best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a run.*--resume auto.*--output.*--overwrite"):
        run(cfg(tmp_path, epochs=1, seed=4))
    assert (tmp_path / "run" / "checkpoint-best.pt").read_bytes() == best  # untouched
    # The CLI says it in one line, exit 2.
    assert main(["train", "--data", "digits", "--output", str(tmp_path / "run"), "--epochs", "1", "--no-progress"]) == 2

    metrics = run(cfg(tmp_path, epochs=1, seed=4, overwrite=True))
    assert metrics["epochs"] == 1
    assert torch.load(tmp_path / "run" / "checkpoint-best.pt", weights_only=True)["train_config"]["seed"] == 4


def test_two_runs_on_one_folder_cannot_interleave_and_a_dead_lock_is_free(tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(UserError, match=f"pid {os.getpid()}"):
            run(cfg(tmp_path, epochs=1))
    # A lock file left by a killed run (no process holds the flock any more) does not block.
    (out / ".lock").write_text("pid 999999 on elsewhere")
    assert run(cfg(tmp_path, epochs=1))["epochs"] == 1


def test_resume_refuses_changed_settings_and_keeps_the_first_config(tmp_path, capsys):
    run(cfg(tmp_path, epochs=1))
    first = (tmp_path / "run" / "config.yaml").read_text()
    for change in (dict(epochs=3), dict(lr=0.1), dict(seed=9), dict(batch_size=8),
                   dict(model_overrides={**TINY, "dims": [8, 24]})):
        with pytest.raises(ConfigError, match="--resume: this run was started with other settings"):
            run(cfg(tmp_path, resume="auto", **{"epochs": 1, **change}))
    assert (tmp_path / "run" / "config.yaml").read_text() == first

    # From the CLI, flags not given are taken from the run; a safe change is accepted and recorded.
    out = str(tmp_path / "cli")
    assert main(["train", "--data", "digits", "--model-overrides", json.dumps(TINY), "--train-subset", "64",
                 "--epochs", "1", "--batch-size", "16", "--num-workers", "0", "--output", out, "--no-progress",
                 "--threads", "1"]) == 0
    assert main(["train", "--resume", "auto", "--output", out, "--epochs", "2", "--no-progress"]) == 2
    assert "--epochs 1 -> 2" in capsys.readouterr().err
    assert main(["train", "--resume", "auto", "--output", out, "--eval-every", "0", "--no-progress"]) == 0
    saved = yaml.safe_load((tmp_path / "cli" / "config.yaml").read_text())
    assert saved["epochs"] == 1 and saved["resumed"] == [{"at_epoch": 1, "changes": {"eval_every": 0}}]


def test_stale_temporaries_are_removed_and_checkpoints_honour_the_umask(tmp_path):
    (tmp_path / "run").mkdir()
    stale = tmp_path / "run" / ".checkpoint-last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    old = os.umask(0o022)
    try:
        run(cfg(tmp_path, epochs=1, resume="auto"))
    finally:
        os.umask(old)
    assert not stale.exists()
    mode = stat.S_IMODE((tmp_path / "run" / "checkpoint-last.pt").stat().st_mode)
    assert mode == 0o644


def test_best_checkpoint_is_written_before_last(tmp_path, monkeypatch):
    order = []
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda state, path: (order.append(path.name), real(state, path)))
    run(cfg(tmp_path, epochs=1))
    assert order == ["checkpoint-best.pt", "checkpoint-last.pt"]
    best = torch.load(tmp_path / "run" / "checkpoint-best.pt", weights_only=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert best["epoch"] == metrics["best_epoch"]


@pytest.mark.parametrize("argv, flag", [
    (["--clip-grad", "-1"], "--clip-grad"), (["--layer-decay", "-1"], "--layer-decay"),
    (["--ema-decay", "2"], "--ema-decay"), (["--mixup", "-1"], "--mixup"), (["--warmup-epochs", "-5"], "--warmup-epochs"),
    (["--eval-every", "-1"], "--eval-every"), (["--model-overrides", "{depths: [0, 0, 0]}"], "depths"),
    (["--smoothing", "2"], "--smoothing"), (["--threads", "-1"], "--threads"), (["--img-size", "0"], "--img-size"),
    (["--batch-size", "0"], "--batch-size"), (["--scale", "0.9", "0.1"], "--scale"), (["--reprob", "1.5"], "--reprob"),
    (["--pretrained", "--finetune", "x.pt"], "--pretrained"),
])
def test_every_bad_option_is_refused_before_any_work_naming_its_flag(argv, flag, capsys, tmp_path):
    assert main(["train", "--output", str(tmp_path / "never"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convnext train: error:") and flag in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


def test_recipe_files_that_are_not_plain_yaml_or_are_folders(tmp_path, capsys):
    evil = tmp_path / "evil.yaml"
    evil.write_text("epochs: !!python/object/apply:os.system ['touch pwned']\n")
    assert main(["train", "--recipe", str(evil)]) == 2
    assert "not a plain YAML mapping" in capsys.readouterr().err and not (tmp_path / "pwned").exists()
    assert main(["train", "--recipe", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


def test_output_that_is_a_file_or_under_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    for out, what in ((f, "is a file"), (f / "sub", "which is a file")):
        with pytest.raises(ConfigError, match=what):
            run(cfg(tmp_path, output=str(out)))


def test_defaults_that_cannot_make_sense_are_adapted_and_said():
    c = load_config(None, data="folder", model="convnext_atto", epochs=2)  # the paper's ImageNet defaults
    new, notes = adapt_config(c, num_train=245, cpus=2, explicit={"data", "model", "epochs"})
    assert new.batch_size == 24 and new.num_workers == 2 and not new.ema and new.warmup_epochs == 0.2
    assert new.drop_last is False and len(notes) == 5
    # Explicit flags are kept; ImageNet scale triggers nothing; --no-adapt keeps everything.
    kept, notes = adapt_config(c, num_train=245, cpus=2, explicit={"batch_size", "warmup_epochs", "ema"})
    assert kept.batch_size == 128 and kept.warmup_epochs == 20 and kept.ema
    paper = load_config("in1k_convnext_tiny")
    assert adapt_config(paper, num_train=1_281_167, world_size=32, cpus=64, local_world_size=8)[1] == []
    assert adapt_config(load_config(None, adapt=False, epochs=2), num_train=245, cpus=2)[1] == []


def test_small_folder_with_defaults_trains_every_image_and_records_the_adaptation(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 45), ("val", 6)):
        for cls in ("ants", "bees"):
            (tmp_path / "d" / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "d" / split / cls / f"{i}.jpg")
    out = tmp_path / "out"
    assert main(["train", "--data", str(tmp_path / "d"), "--model", "convnext_atto", "--epochs", "1", "--img-size",
                 "32", "--output", str(out), "--no-progress", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "adapted: batch_size 128 -> 8" in printed and "adapted: ema -> off" in printed
    assert "top-5" not in printed  # 2 classes
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["batch_size"] == 8 and resolved["ema"] is False and resolved["drop_last"] is False
    assert len(resolved["resolved"]["adapted"]) >= 3
    ckpt = torch.load(out / "checkpoint-last.pt", weights_only=True)
    assert ckpt["step"] == 12 and ckpt["reported_weights"] == "model"  # ceil(90 / 8) steps: no image left out


@pytest.mark.parametrize("n, b, world, multiple", [(245, 24, 1, 1), (245, 24, 2, 2), (10, 4, 3, 2), (100, 10, 4, 1)])
def test_sampler_without_drop_last_covers_every_image_with_equal_batches_per_rank(n, b, world, multiple):
    data = list(range(n))
    seen, lengths = set(), set()
    for rank in range(world):
        s = TrainSampler(data, b, rank, world, seed=1, drop_last=False, multiple=multiple)
        idx = list(s)
        seen.update(idx)
        lengths.add(len(idx))
        tail = len(idx) - s.full_batches * b
        assert tail % multiple == 0 and len(idx) == len(s)
    assert seen == set(data) and len(lengths) == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line(capsys, tmp_path):
    assert main(["train", "--device", "cuda", "--output", str(tmp_path / "r")]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
