"""Nothing lost, nothing silently wrong: run folders, resume, interrupts, validation, adapted defaults."""
import dataclasses
import json
import os
import stat

import pytest
import torch
import yaml

import convnext.train.trainer as trainer
from convnext.cli import main
from convnext.errors import CheckpointError, ConfigError, UserError
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


def test_last_is_written_before_best_and_best_holds_only_its_weights(tmp_path, monkeypatch):
    order = []
    real = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda state, path: (order.append(path.name), real(state, path)))
    run(cfg(tmp_path, epochs=1))
    assert order == ["checkpoint-last.pt", "checkpoint-best.pt"]
    best = torch.load(tmp_path / "run" / "checkpoint-best.pt", weights_only=True)
    last = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert best["epoch"] == metrics["best_epoch"] and best["reported_weights"] == "model"
    assert {"optimizer", "rng", "scaler"} & set(best) == set() and {"optimizer", "rng"} <= set(last)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    # A kill between the two writes leaves no best: the resume writes it from the last (the best epoch).
    (tmp_path / "run" / "checkpoint-best.pt").unlink()
    order.clear()
    run(cfg(tmp_path, epochs=1, resume="auto"))
    assert order == ["checkpoint-best.pt"]
    again = torch.load(tmp_path / "run" / "checkpoint-best.pt", weights_only=True)
    assert again["epoch"] == 1 and "optimizer" not in again
    # Resuming from weights only is refused in one line (no checkpoint-last.pt to continue).
    (tmp_path / "run" / "checkpoint-last.pt").unlink()
    with pytest.raises(CheckpointError, match="holds weights only"):
        run(cfg(tmp_path, epochs=1, resume="auto"))


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
    assert new.drop_last is False and new.threads == 1 and len(notes) == 6
    assert "threads -> 1: 2 CPU(s), 2 of them for the loader workers" in notes
    # Explicit flags are kept; ImageNet scale triggers nothing; --no-adapt keeps everything.
    kept, notes = adapt_config(c, num_train=245, cpus=2, explicit={"batch_size", "warmup_epochs", "ema"})
    assert kept.batch_size == 128 and kept.warmup_epochs == 20 and kept.ema
    paper = load_config("in1k_convnext_tiny")  # at ImageNet scale only the thread count is set
    big, notes = adapt_config(paper, num_train=1_281_167, world_size=32, cpus=64, local_world_size=8)
    assert notes == ["threads -> 4: 64 CPU(s) for 8 processes, 4 of them for the loader workers"]
    assert big == dataclasses.replace(paper, threads=4)
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
    assert "lr: 0.004 x 8/4096 = 7.81e-06 (linear scaling rule" in printed
    assert printed.count("note: from scratch on 90 images") == 1 and "--recipe finetune_small" in printed
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


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_save_and_resume_bit_identically(tmp_path, monkeypatch, signum, capsys, signal_after_loss,
                                                            all_tensors):
    run(cfg(tmp_path, "full", **STOCHASTIC))
    signal_after_loss(ClassificationTask, signum, at_call=9)  # batch 3 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        run(cfg(tmp_path, "cut", **STOCHASTIC))
    monkeypatch.undo()
    printed = capsys.readouterr().out
    assert ("terminated (SIGTERM)" if signum == "SIGTERM" else "interrupted:") in printed
    assert "epoch 2, batch 2" in printed and "--resume auto" in printed
    ckpt = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 2, 8)
    assert (tmp_path / "cut" / "curves.png").is_file()  # the curves of the epoch that finished
    run(cfg(tmp_path, "cut", resume="auto", **STOCHASTIC))
    full = all_tensors(tmp_path / "full" / "checkpoint-last.pt")
    resumed = all_tensors(tmp_path / "cut" / "checkpoint-last.pt")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)


@pytest.mark.parametrize("what", ["interrupt", "bad file"])
def test_interrupt_or_bad_file_in_the_evaluation_saves_the_trained_epoch(tmp_path, monkeypatch, what, capsys, all_tensors):
    from convnext.errors import DataError

    run(cfg(tmp_path, "full", **STOCHASTIC))
    real = ClassificationTask.evaluate

    def failing(self, *args, **kw):
        raise KeyboardInterrupt if what == "interrupt" else DataError("val/3/x.png: cannot be read")

    monkeypatch.setattr(ClassificationTask, "evaluate", failing)
    with pytest.raises(KeyboardInterrupt if what == "interrupt" else DataError):
        run(cfg(tmp_path, "cut", **STOCHASTIC))
    monkeypatch.setattr(ClassificationTask, "evaluate", real)
    ckpt = torch.load(tmp_path / "cut" / "checkpoint-last.pt", weights_only=True)
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 0, 6)  # the epoch is not retrained
    assert ckpt["pending_record"]["epoch"] == 1
    assert "before its evaluation" in capsys.readouterr().out
    metrics = run(cfg(tmp_path, "cut", resume="auto", **STOCHASTIC))
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert [h["train_loss"] for h in metrics["history"]] == [h["train_loss"] for h in full["history"]]
    assert [h["top1"] for h in metrics["history"]] == [h["top1"] for h in full["history"]]
    a, b = all_tensors(tmp_path / "full" / "checkpoint-last.pt"), all_tensors(tmp_path / "cut" / "checkpoint-last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_during_a_checkpoint_write_waits_for_it(tmp_path, monkeypatch, capsys):
    import signal

    real = trainer.save_checkpoint

    def signalled(state, path):
        if path.name == "checkpoint-last.pt" and state["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the first save
        real(state, path)

    monkeypatch.setattr(trainer, "save_checkpoint", signalled)
    out = tmp_path / "cli"
    argv = ["train", "--data", "digits", "--model-overrides", json.dumps(TINY), "--train-subset", "96", "--epochs",
            "2", "--batch-size", "16", "--num-workers", "0", "--threads", "1", "--output", str(out), "--no-progress",
            "--no-adapt"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted" in err
    # The write finished, and so did the rest of the epoch's files (best, metrics) before it stopped.
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["epoch"] == 1
    assert (out / "checkpoint-best.pt").is_file() and json.loads((out / "metrics.json").read_text())["epochs"] == 1
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    assert main(["train", "--resume", "auto", "--output", str(out), "--no-progress"]) == 0
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["epoch"] == 2


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoints(tmp_path, monkeypatch, capsys):
    import errno

    real = torch.save
    calls = {"n": 0}

    def full_disk(obj, f, *a, **kw):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 wrote last + best; epoch 2 finds the disk full
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full_disk)
    out = tmp_path / "run"
    assert main(["train", "--data", "digits", "--model-overrides", json.dumps(TINY), "--train-subset", "96", "--epochs",
                 "2", "--batch-size", "16", "--num-workers", "0", "--threads", "1", "--output", str(out),
                 "--no-progress", "--no-adapt"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"cannot write {out / 'checkpoint-last.pt'}: No space left on device" in err and "intact" in err
    monkeypatch.undo()
    assert torch.load(out / "checkpoint-last.pt", weights_only=True)["epoch"] == 1
    assert not list(out.glob(".*.tmp"))


def test_a_folder_without_a_checkpoint_does_not_block_a_new_run(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "tensorboard").mkdir(parents=True)
    (out / "tensorboard" / "events.out.tfevents.1").write_bytes(b"")
    (out / "config.yaml").write_text("epochs: 9\n")  # left by a run killed before its first save
    assert run(cfg(tmp_path, epochs=1))["epochs"] == 1
    assert "no checkpoint was saved in this folder: removed the previous run's config.yaml, tensorboard" in \
        capsys.readouterr().out
    assert yaml.safe_load((out / "config.yaml").read_text())["epochs"] == 1


def test_explicit_means_what_the_user_set_never_a_recipe_file_name(tmp_path):
    from types import SimpleNamespace

    from convnext.train import TrainConfig
    from convnext.train.config import given_fields, is_shipped_recipe, replace_config
    from convnext.train.distributed import DistInfo

    data = SimpleNamespace(train=list(range(200)))

    def adapted(config):
        return trainer._adapt(config, DistInfo(), given_fields(config), data)[0]

    # A user's file that happens to be called digits.yaml is theirs: every key in it is kept.
    mine = tmp_path / "x" / "digits.yaml"
    mine.parent.mkdir()
    mine.write_text("epochs: 3\nwarmup_epochs: 2\nbatch_size: 128\n")
    c = load_config(str(mine), data="folder")
    assert c.recipe == str(mine) and not is_shipped_recipe(c.recipe)
    assert {"epochs", "warmup_epochs", "batch_size", "data"} <= given_fields(c)
    kept = adapted(c)
    assert (kept.warmup_epochs, kept.batch_size) == (2, 128)
    assert trainer.default_output(c).name == "digits-convnext_tiny"
    # The shipped digits recipe: its batch is kept, its warm-up (2 of 3 epochs) is shortened.
    shipped = adapted(load_config("digits", epochs=3))
    assert shipped.batch_size == 64 and shipped.warmup_epochs == 0.3
    # Fields set in Python are kept; defaults are adapted; replace_config keeps the record.
    assert adapted(TrainConfig(data="folder", epochs=3, warmup_epochs=2)).warmup_epochs == 2
    assert adapted(replace_config(TrainConfig(data="folder", epochs=3, warmup_epochs=2), seed=1)).warmup_epochs == 2
    assert adapted(TrainConfig(data="folder", epochs=3)).warmup_epochs == 0.3


def test_the_thread_count_leaves_the_cores_to_the_loader_workers():
    c = load_config(None, data="folder", model="convnext_atto", epochs=300)
    two = adapt_config(c, num_train=100_000, cpus=2)[0]
    assert (two.num_workers, two.threads) == (2, 1)
    alone, notes = adapt_config(load_config(None, data="folder", num_workers=0), num_train=100_000, cpus=2,
                                explicit={"num_workers"})
    assert alone.threads == 2 and not any("threads" in n for n in notes)
    assert adapt_config(c, num_train=100_000, cpus=2, explicit={"threads"})[0].threads is None
    assert adapt_config(load_config(None, threads=3), num_train=100_000, cpus=2)[0].threads == 3


def test_sigterm_to_the_process_group_with_loader_workers_saves_and_resumes(tmp_path, all_tensors):
    """As `timeout` or a scheduler sends it: SIGTERM reaches the main process and its DataLoader workers."""
    import signal
    import subprocess
    import sys
    import time

    def argv(out, *extra):
        return [sys.executable, "-m", "convnext", "train", "--data", "digits", "--model-overrides", json.dumps(TINY),
                "--train-subset", "192", "--epochs", "3", "--batch-size", "16", "--num-workers", "2", "--threads", "1",
                "--seed", "3", "--no-adapt", "--no-progress", "--deterministic", "--output", str(out), *extra]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(argv(tmp_path / "full"), env=env, capture_output=True).returncode == 0
    proc = subprocess.Popen(argv(tmp_path / "cut"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    deadline = time.time() + 300
    while not (tmp_path / "cut" / "checkpoint-last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.1)  # into epoch 2 (of 3: a fast machine may finish one in well under a second)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal (a very fast machine)")
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert "terminated (SIGTERM): saved" in out
    done = subprocess.run(argv(tmp_path / "cut", "--resume", "auto"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = all_tensors(tmp_path / "full" / "checkpoint-last.pt"), all_tensors(tmp_path / "cut" / "checkpoint-last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_signal_while_the_final_results_are_written_lets_them_finish(tmp_path, monkeypatch, capsys):
    """After the last epoch Ctrl-C / SIGTERM wait for metrics.json and the curves; the run ends complete."""
    import signal

    import convnext.train.trainer as trainer_module

    real = trainer_module._plot

    def signalled_plot(r, hist):  # the curves are drawn only at the end of a run that was not interrupted
        os.kill(os.getpid(), signal.SIGTERM)  # arrives inside the deferred block, after metrics.json
        return real(r, hist)

    monkeypatch.setattr(trainer_module, "_plot", signalled_plot)
    metrics = run(cfg(tmp_path, "done"))
    assert metrics["epochs"] == 2 and (tmp_path / "done" / "metrics.json").is_file()
    assert (tmp_path / "done" / "curves.png").is_file()
    assert "SIGTERM received after the last epoch: the run finished" in capsys.readouterr().out
