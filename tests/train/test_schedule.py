import math

import pytest

from convnext.train.schedule import lr_at_step, scaled_lr, steps_per_epoch


def test_linear_scaling_rule():
    assert scaled_lr(4e-3, 4096) == pytest.approx(4e-3)
    assert scaled_lr(4e-3, 1024) == pytest.approx(1e-3)
    assert scaled_lr(5e-5, 512, base_batch=512) == pytest.approx(5e-5)


def test_steps_per_epoch_drops_partial_accumulation():
    assert steps_per_epoch(312, 1) == 312
    assert steps_per_epoch(10, 4) == 2


def test_warmup_is_linear_from_zero():
    kw = dict(peak_lr=1.0, min_lr=0.0, warmup_steps=10, total_steps=100)
    assert lr_at_step(0, **kw) == 0.0
    assert [lr_at_step(s, **kw) for s in range(10)] == pytest.approx([s / 10 for s in range(10)])


def test_cosine_from_peak_to_min():
    kw = dict(peak_lr=4e-3, min_lr=1e-6, warmup_steps=20, total_steps=120)
    assert lr_at_step(20, **kw) == pytest.approx(4e-3)  # peak right after warm-up
    mid = lr_at_step(70, **kw)  # half-way through the cosine
    assert mid == pytest.approx(1e-6 + (4e-3 - 1e-6) / 2)
    assert lr_at_step(119, **kw) == pytest.approx(1e-6 + (4e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert lr_at_step(10_000, **kw) == pytest.approx(1e-6)  # clamps past the end
    values = [lr_at_step(s, **kw) for s in range(20, 120)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_no_warmup():
    kw = dict(peak_lr=5e-5, min_lr=1e-6, warmup_steps=0, total_steps=30)
    assert lr_at_step(0, **kw) == pytest.approx(5e-5)


# mmdet's step schedule and mmseg's poly, values worked out by hand.
def test_step_schedule_warms_up_from_the_ratio_then_divides_by_ten_at_each_milestone():
    from convnext.train.schedule import lr_step_schedule

    kw = dict(peak_lr=1.0, milestones=[6, 9], warmup_steps=4, warmup_ratio=0.001)
    got = [lr_step_schedule(s, **kw) for s in (0, 2, 4, 5, 6, 8, 9, 100)]
    assert got == pytest.approx([0.001, 0.5005, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    # A milestone inside the warm-up: both factors apply (0.1 x (0.001 + 0.999 x 3/4)).
    got = lr_step_schedule(3, peak_lr=1.0, milestones=[2], warmup_steps=4, warmup_ratio=0.001)
    assert got == pytest.approx(0.075025)


def test_poly_schedule_decays_linearly_to_min_and_clamps():
    from convnext.train.schedule import lr_poly

    assert [lr_poly(s, peak_lr=1.0, total_steps=10) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert lr_poly(5, peak_lr=1.0, total_steps=10, power=2.0, min_lr=0.1) == pytest.approx(0.9 * 0.25 + 0.1)
    # Warm-up from 1e-6 x lr: 0.8 x (1e-6 + (1 - 1e-6) x 2/4) at step 2 of 4.
    assert lr_poly(2, peak_lr=1.0, total_steps=10, warmup_steps=4, warmup_ratio=1e-6) == pytest.approx(0.4000004)


def _sched_config(**kw):
    from types import SimpleNamespace

    base = dict(epochs=3, warmup_steps=None, warmup_epochs=1, schedule="cosine", lr_milestones=(0.5,),
                warmup_ratio=0.001, min_lr=0.0)
    return SimpleNamespace(**{**base, **kw})


def test_make_schedule_builds_each_schedule_from_the_config():
    from convnext.train.schedule import make_schedule

    # 3 epochs x 10 steps, 1 warm-up epoch = 10 steps.
    lr_at, warmup = make_schedule(_sched_config(schedule="step"), peak_lr=2.0, steps_per_epoch=10)
    assert warmup == 10 and [lr_at(s) for s in (0, 10, 14, 15, 29)] == pytest.approx([0.002, 2.0, 2.0, 0.2, 0.2])
    lr_at, _ = make_schedule(_sched_config(schedule="poly"), peak_lr=3.0, steps_per_epoch=10)
    assert lr_at(20) == pytest.approx(3.0 * (1 - 20 / 30)) and lr_at(30) == 0.0
    lr_at, _ = make_schedule(_sched_config(schedule="cosine", min_lr=0.5), peak_lr=1.5, steps_per_epoch=10)
    assert [lr_at(s) for s in (0, 5, 10, 20, 30)] == pytest.approx([0.0, 0.75, 1.5, 1.0, 0.5])
    # warmup_steps wins over warmup_epochs; longer than the run, it is cut to the run.
    assert make_schedule(_sched_config(warmup_steps=7), peak_lr=1.0, steps_per_epoch=10)[1] == 7
    assert make_schedule(_sched_config(warmup_steps=500), peak_lr=1.0, steps_per_epoch=10)[1] == 30


def test_make_schedule_refuses_an_unknown_name_and_the_choices_are_declared_once():
    import argparse

    from convnext.errors import ConfigError
    from convnext.train import TrainConfig
    from convnext.train.cli import register
    from convnext.train.config import CHOICES
    from convnext.train.schedule import SCHEDULES, make_schedule

    with pytest.raises(ConfigError, match="--schedule must be one of cosine, step, poly, got 'linear'"):
        make_schedule(_sched_config(schedule="linear"), peak_lr=1.0, steps_per_epoch=10)
    with pytest.raises(ConfigError, match="--schedule must be one of cosine, step, poly"):
        TrainConfig(schedule="linear")
    assert list(SCHEDULES) == list(CHOICES["schedule"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {a.dest: a for a in train._actions}
    for name, choices in CHOICES.items():
        assert tuple(flags[name].choices) == tuple(choices), name
        assert all(f"{k}: " in flags[name].help for k in choices), name  # the help lists each choice
