"""A picture of `convnext bench` reports: img/s of each implementation, with its spread over rounds.

`plot_reports([report, ...], "bench.png")` draws one panel per report (the dict `run_benchmark` returns, or
the JSON `convnext bench --json` writes): a horizontal bar per implementation at its median img/s, a whisker
from its slowest to its fastest round, and the speed-up ours / that implementation (median of per-round ratios,
as the text report gives it; for our int8 program, int8 / ours). `convnext bench --plot OUT` draws the run it just
made; `benchmarks/plot_bench.py` draws saved JSON files side by side. The figure is drawn without pyplot, so the
caller's matplotlib backend (a notebook's, say) is left as it is.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["PLOT_SUFFIXES", "check_plot_path", "panel_title", "plot_reports"]

PLOT_SUFFIXES = (".png", ".svg", ".pdf", ".jpg")

_OURS, _OWN_COLOR, _PEER = "#1f77b4", "#8fbbe0", "#9e9e9e"
_OWN = ("int8",)  # other forms of ours (`--compare int8`: our model as a PT2E int8 program)


def check_plot_path(path: str, flag: str = "--plot") -> None:
    """A one-line error, before a long run, unless the chart can be written at `path`: one of `PLOT_SUFFIXES`, not a
    directory, in a writable folder (`convnext.outputs.check_output_file`; an existing chart is replaced, as
    `--json` replaces its file)."""
    from ..outputs import check_output_file

    check_output_file(path, flag, PLOT_SUFFIXES, force=True)


def panel_title(report: dict) -> str:
    """Model, mode, batch, resolution and dtype of a report, in one line."""
    cfg = report.get("config", {})
    dtype = cfg.get("dtype", "?")
    resolved = cfg.get("resolved_dtype")
    if resolved and resolved != dtype:
        dtype = f"{dtype} -> {resolved}"
    return (f"{cfg.get('model', '?')} {cfg.get('mode', '')}, batch {cfg.get('batch_size', '?')}, "
            f"{cfg.get('img_size', '?')}px, {dtype}, {cfg.get('device', '?')}")


def _bars(report: dict) -> list[tuple[str, float, float, float, str]]:
    """(name, img/s, slowest round img/s, fastest round img/s, label) per implementation, ours first."""
    batch = report.get("config", {}).get("batch_size", 1) * report.get("config", {}).get("iters", 1)
    ratios = report.get("ratios", {})
    rows = []
    for name, r in report.get("results", {}).items():
        ips = r["img_per_s"]
        lo = batch * 1e3 / r["latency_ms_max"] if r.get("latency_ms_max") else ips
        hi = batch * 1e3 / r["latency_ms_min"] if r.get("latency_ms_min") else ips
        label = f"{ips:.1f} img/s"
        if name in _OWN and name in ratios:  # ours in another form: how much faster than ours it is
            q = ratios[name]
            label += (f"  ({name} / ours {1 / q['speedup_per_round_median']:.2f}x, "
                      f"{1 / q['speedup_per_round_max']:.2f}..{1 / q['speedup_per_round_min']:.2f})")
        elif name in ratios:
            q = ratios[name]
            label += (f"  (ours / {name} {q['speedup_per_round_median']:.2f}x, "
                      f"{q['speedup_per_round_min']:.2f}..{q['speedup_per_round_max']:.2f})")
        rows.append((name, ips, lo, hi, label))
    rows.sort(key=lambda row: row[0] != "ours")
    return rows


def plot_reports(reports: Sequence[dict], out: str | Path, *, titles: Sequence[str] | None = None) -> Path:
    """Write the chart of `reports` (one panel each) to `out` (.png, .svg or .pdf: matplotlib picks by suffix)."""
    from matplotlib.figure import Figure

    if not reports:
        raise ValueError("plot_reports: no report to draw")
    panels = [_bars(r) for r in reports]
    if not all(panels):
        raise ValueError("plot_reports: a report has no timed implementation ('results' is empty)")
    heights = [0.5 * len(p) + 1.1 for p in panels]
    fig = Figure(figsize=(9.5, sum(heights)))
    axes = fig.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for i, (ax, bars, report) in enumerate(zip(axes[:, 0], panels, reports)):
        names = [b[0] for b in bars][::-1]
        ips = [b[1] for b in bars][::-1]
        lo = [b[1] - b[2] for b in bars][::-1]
        hi = [b[3] - b[1] for b in bars][::-1]
        colors = [_OURS if n == "ours" else _OWN_COLOR if n in _OWN else _PEER for n in names]
        ax.barh(names, ips, color=colors, xerr=[lo, hi], capsize=3, error_kw={"elinewidth": 1, "ecolor": "#333333"})
        top = max(b[3] for b in bars)
        for y, b in enumerate(bars[::-1]):
            ax.text(b[3] + 0.01 * top, y, b[4], va="center", fontsize=8)
        ax.set_xlim(0, top * 1.9)
        ax.set_xlabel("images / s (median; whisker: slowest..fastest round)")
        title = titles[i] if titles and i < len(titles) else panel_title(report)
        machine = report.get("machine", {})
        sub = ", ".join(str(x) for x in (machine.get("gpu") or machine.get("cpu"),
                                         f"{machine.get('torch_threads')} threads" if machine.get("torch_threads")
                                         else None, f"torch {machine.get('torch')}" if machine.get("torch") else None)
                        if x)
        ax.set_title(f"{title}\n{sub}" if sub else title, fontsize=9, loc="left")
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    return out
