"""Roadmap tables and chart on synthetic results, and the `convnext roadmap --list` command."""
import math

import pytest
from PIL import Image

from convnext.cli import main
from convnext.models.roadmap import STEP_NAMES
from convnext.roadmap.results import (
    StepResult,
    format_ladder,
    ladder,
    plot_roadmap,
    read_csv,
    write_csv,
    write_markdown,
)


@pytest.fixture(scope="module")
def r50_rows():
    return ladder("r50")


def _with_results(rows):
    # Synthetic accuracies: each step = its parent's value + the paper's change, except `depthwise`
    # (which goes up here while the paper's goes down) and `inverted`, left without results.
    out = [StepResult(**{**r.__dict__, "top1": []}) for r in rows]
    by_name = {r.step: r for r in out}
    for r in out:
        if r.step == "inverted":
            continue
        parent = by_name.get(r.builds_on or "")
        base = 90.0 if parent is None or not parent.top1 else parent.top1_mean
        delta = 0.5 if r.step == "depthwise" else (0.0 if parent is None else r.paper_top1 - parent.paper_top1)
        r.top1 = [base + delta - 0.1, base + delta + 0.1]
        r.run_params_m, r.run_mflops = r.params_m, r.gflops * 1000 / 49
    return out


def test_ladder_rows(r50_rows):
    assert [r.step for r in r50_rows] == list(STEP_NAMES)
    first, last = r50_rows[0], r50_rows[-1]
    assert first.params_m == pytest.approx(25.557, abs=1e-3) and first.gflops == pytest.approx(4.089, abs=1e-3)
    assert last.gflops == pytest.approx(4.456, abs=1e-3) and last.paper_top1 == 81.97
    assert math.isnan(first.top1_mean) and math.isnan(first.top1_std)
    assert [r.step for r in ladder("r200", ["widen", "baseline"])] == ["baseline", "widen"]  # ladder order


def test_mean_and_sample_std():
    r = StepResult("r50", "x", "", True, None, 1.0, 1.0, 1.0, 80.0, None, top1=[1.0, 2.0, 3.0])
    assert r.top1_mean == 2.0 and r.top1_std == 1.0  # sample std (n - 1), as "mean +- std over 3 seeds"
    assert StepResult("r50", "x", "", True, None, 1.0, 1.0, 1.0, 80.0, None, top1=[5.0]).top1_std == 0.0


def test_csv_roundtrip(tmp_path, r50_rows):
    rows = _with_results(r50_rows)
    write_csv(rows, tmp_path / "results.csv")
    assert read_csv(tmp_path / "results.csv") == rows


def test_markdown_table_and_direction_summary(tmp_path, r50_rows):
    rows = _with_results(r50_rows)
    write_markdown(rows, tmp_path / "results.md", title="T", run_desc="synthetic run")
    text = (tmp_path / "results.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(STEP_NAMES)  # header + one row per step
    sep = next(line for line in table if line.startswith("| sep_downsample |"))
    assert "4.46 / 4.49" in sep and "81.97 ± 0.06" in sep
    assert "| inverted |" in text and "- (n=0)" in text
    # move_up_dw's parent (inverted) has no result, so it has no delta; depthwise disagrees; the paper's
    # sub-0.1 changes (kernel9 0.00, gelu +0.05, layernorm +0.06) count as flat.
    assert "differs for depthwise;" in text
    assert "flat in the paper (|Δ| < 0.1): kernel9, gelu, layernorm." in text
    assert "agrees with the paper for 9 of 10 steps" in text
    # seeds differ by 0.2 (sample std 0.1414): changes of at most 0.14 in absolute value are unresolved
    assert "not resolved by this run): kernel9, kernel11, gelu, fewer_norm, layernorm." in text


def test_plot_writes_a_png(tmp_path, r50_rows):
    plot_roadmap(_with_results(r50_rows), tmp_path / "roadmap.png", title="T", dataset="digits")
    with Image.open(tmp_path / "roadmap.png") as im:
        assert im.format == "PNG" and im.width > 800 and im.height > 500


def test_format_ladder(r50_rows):
    text = format_ladder(r50_rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(STEP_NAMES)
    kernel9 = next(line for line in lines if line.startswith("kernel9 "))
    assert " no " in kernel9 and "4.210" in kernel9 and "80.57 ± 0.06" in kernel9


def test_cli_list(capsys):
    assert main(["roadmap", "--list", "--regime", "r200", "--steps", "baseline,sep_downsample"]) == 0
    out = capsys.readouterr().out
    assert "ResNet-200" in out and "ConvNeXt-B" in out and "15.355" in out and "83.60" in out


@pytest.mark.parametrize("argv, message", [
    (["roadmap", "--list", "--steps", "baseline,kernel13"], "--steps: unknown step(s) kernel13"),
    (["roadmap", "--data", "digits"], "both --data"),
    (["roadmap", "--data", "digits", "--output", "x", "--epochs", "0"], "--epochs must be >= 1"),
    (["roadmap", "--data", "digits", "--output", "x", "--set", "lr"], "expected KEY=VALUE"),
])
def test_cli_errors_are_clear(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_accuracy_axes_bounded_to_the_data():
    from convnext.roadmap.results import _accuracy_limits

    # docs/roadmap.md's digits run: 84.86 ± 0.20 .. 97.22 ± 1.18 and 93.89 ± 3.93
    lo, hi = _accuracy_limits([84.86, 97.22, 93.89], [0.20, 1.18, 3.93])
    assert (lo, hi) == (pytest.approx(84.66 - 1.374), pytest.approx(98.40 + 1.374))  # 10 % of the span each side
    assert _accuracy_limits([99.5, 90.0], [0.4, 0.0])[1] == 100.0  # never past 100 %
    lo, hi = _accuracy_limits([78.82, 81.97], [0.07, 0.06])  # the paper's panel
    assert (lo, hi) == (pytest.approx(78.25), pytest.approx(82.53))
    assert _accuracy_limits([math.nan], [math.nan]) == (0.0, 100.0)


def test_plot_caption_names_settings_and_error_bars(tmp_path, r50_rows, monkeypatch):
    import matplotlib.figure

    texts = []
    real_text = matplotlib.figure.Figure.text
    monkeypatch.setattr(matplotlib.figure.Figure, "text",
                        lambda self, x, y, s, *a, **k: texts.append(s) or real_text(self, x, y, s, *a, **k))
    plot_roadmap(_with_results(r50_rows), tmp_path / "roadmap.png", dataset="digits",
                 settings="digits, 8x8 px, widths / 4, 3 epochs")
    (caption,) = texts
    assert caption.startswith("Run: digits, 8x8 px, widths / 4, 3 epochs\n")
    assert "Error bars: sample std over seeds (2 seed(s) per step" in caption
