"""The roadmap experiment runner: one recipe for all runs, resumable per step/seed, outputs written."""
import json
from pathlib import Path

import pytest
import yaml

from convnext.cli import main
from convnext.roadmap.experiment import resolve_recipe, run_experiment
from convnext.roadmap.results import read_csv
from convnext.train import load_recipe


class FakeTrainer:
    """Stands in for `convnext.train.run`: records the configs and leaves a run folder like the trainer's."""

    def __init__(self):
        self.configs = []

    def __call__(self, config):
        self.configs.append(config)
        out = Path(config.output)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump({"resolved": {"num_classes": 10}}))
        (out / "checkpoint-last.pt").write_bytes(b"weights")
        top1 = 50.0 + 10 * config.seed + len(config.model)  # deterministic, differs per step and seed
        metrics = {"top1": top1, "top5": 100.0}
        (out / "metrics.json").write_text(json.dumps(metrics))
        return metrics


def test_one_recipe_resumable_runs(tmp_path, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr("convnext.train.run", fake)
    steps = ["baseline", "kernel9"]
    rows = run_experiment("digits", tmp_path, steps=steps, seeds=2, train_overrides={"epochs": 2}, progress=False)

    assert [(c.model.removeprefix("roadmap_r50_"), c.seed) for c in fake.configs] == [
        ("baseline", 0), ("baseline", 1), ("kernel9", 0), ("kernel9", 1)]
    shipped = load_recipe("digits")
    for c in fake.configs:  # the fixed recipe: digits recipe + override, EMA off, small-input stems, auto-resume
        assert (c.epochs, c.lr, c.img_size, c.ema, c.resume) == (2, shipped["lr"], shipped["img_size"], False, "auto")
        assert c.model_overrides == {"small_input": True}
        assert c.output == str(tmp_path / c.model.removeprefix("roadmap_r50_") / f"seed{c.seed}")
    assert not list(tmp_path.glob("*/*/checkpoint-*.pt"))  # finished runs' checkpoints are removed

    expected = {"baseline": [70.0, 80.0], "kernel9": [69.0, 79.0]}
    assert {r.step: r.top1 for r in rows} == expected
    assert {r.step: r.top1 for r in read_csv(tmp_path / "results.csv")} == expected
    assert "75.00 ± 7.07 (n=2)" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "roadmap.png").stat().st_size > 10_000

    # Rerun with one more step: finished runs are reused, only the new step trains.
    fake.configs.clear()
    rows = run_experiment("digits", tmp_path, steps=steps + ["gelu"], seeds=2, train_overrides={"epochs": 2},
                          progress=False)
    assert [c.model for c in fake.configs] == ["roadmap_r50_gelu"] * 2
    assert [r.step for r in rows] == ["baseline", "kernel9", "gelu"]


def test_recipe_resolution():
    cfg = resolve_recipe("digits", overrides={"img_size": 32})
    assert cfg.recipe == "digits" and cfg.img_size == 32 and cfg.ema is False
    assert cfg.model_overrides == {}  # the recipe's network (atto widths) is dropped: each step sets its own
    with pytest.raises(ValueError, match="seed"):
        resolve_recipe("digits", overrides={"seed": 3})
    with pytest.raises(ValueError, match="no_such_option"):
        resolve_recipe("digits", overrides={"no_such_option": 1})


def test_cli_bad_recipe_option(tmp_path, capsys):
    assert main(["roadmap", "--data", "digits", "--output", str(tmp_path), "--set", "warmup=1"]) == 2
    assert "warmup" in capsys.readouterr().err
    assert not (tmp_path / "results.csv").exists()


def test_tiny_real_experiment(tmp_path):
    # One step, a few optimizer steps of the real trainer on the built-in digits.
    argv = ["roadmap", "--data", "digits", "--steps", "depthwise", "--epochs", "1", "--train-subset", "64",
            "--width-div", "4", "--output", str(tmp_path), "--no-estimate"]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "depthwise" / "seed0" / "metrics.json").read_text())
    assert 0.0 <= metrics["top1"] <= 100.0 and metrics["evaluated"] == "model"  # EMA off
    (row,) = read_csv(tmp_path / "results.csv")
    assert row.step == "depthwise" and row.top1 == [metrics["top1"]]
    assert row.run_params_m * 1e6 == pytest.approx(metrics["params"])
    assert row.run_params_m < row.params_m / 10  # trained at widths / 4
    assert (tmp_path / "results.md").exists() and (tmp_path / "roadmap.png").exists()


def test_resume_refuses_other_settings(tmp_path, monkeypatch):
    fake = FakeTrainer()
    monkeypatch.setattr("convnext.train.run", fake)
    run_experiment("digits", tmp_path, steps=["depthwise"], width_div=4, progress=False)
    assert fake.configs[0].model_overrides == {"small_input": True, "widths": [16, 32, 64, 128]}
    with pytest.raises(ValueError, match=r"other settings \(width_div, recipe.lr\)"):
        run_experiment("digits", tmp_path, steps=["depthwise"], train_overrides={"lr": 1e-3}, progress=False)
    with pytest.raises(ValueError, match="width_div must divide"):
        run_experiment("digits", tmp_path / "new", width_div=5, progress=False)


def test_interrupt_hint_and_rerun_continues(tmp_path, monkeypatch, capsys):
    fake = FakeTrainer()

    def interrupted_second_run(config):
        if len(fake.configs) == 1:
            raise KeyboardInterrupt  # as the trainer re-raises it after saving its checkpoint
        return fake(config)

    monkeypatch.setattr("convnext.train.run", interrupted_second_run)
    argv = ["roadmap", "--data", "digits", "--steps", "baseline,kernel9", "--output", str(tmp_path), "--no-estimate"]
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted: rerun the same `convnext roadmap ...` command to continue where it stopped" in err
    assert [c.model for c in fake.configs] == ["roadmap_r50_baseline"]

    monkeypatch.setattr("convnext.train.run", fake)
    assert main(argv) == 0  # the same command: the finished step is reused, only kernel9 trains
    assert [c.model for c in fake.configs] == ["roadmap_r50_baseline", "roadmap_r50_kernel9"]


def test_estimate_scales_one_timed_step(monkeypatch):
    from convnext.roadmap import experiment

    clock = iter(range(0, 1000, 1))  # every perf_counter() call advances 1 s: each timed step "takes" 1 s
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: float(next(clock)))
    seconds, how = experiment.estimate_seconds("digits", steps=["depthwise", "widen"], seeds=2, width_div=4,
                                               train_overrides={"epochs": 2, "train_subset": 64})
    # 1 s per batch of 8 -> 1/8 s per image x 64 images x 2 epochs x (2 steps x 2 seeds)
    assert seconds == pytest.approx(64 * 2 * 4 / 8)
    assert "roadmap_r50_depthwise on 8 images" in how and "x 64 images x 2 epoch(s) x 4 runs (2 steps x 2 seed(s))" in how
