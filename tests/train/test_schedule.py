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
