"""The roadmap ladder and its results: table rows, `results.csv`, `results.md` and the Figure-2-style chart.

One row per step (`StepResult`) carries the step's description, the paper's numbers (Tables 10/11)
and the measured top-1 of every seed; the writers only format it.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..models import build_model, count_flops, count_params
from ..models.roadmap import RoadmapStep, roadmap_steps

__all__ = ["StepResult", "ladder", "write_csv", "read_csv", "write_markdown", "plot_roadmap", "format_ladder"]

PAPER_FLAT = 0.1  # top-1 points: a smaller paper change between two steps is within its seed std


@dataclass
class StepResult:
    regime: str
    step: str
    change: str
    adopted: bool
    builds_on: str | None
    params_m: float  # registered (ImageNet, 224) model
    gflops: float  # ours: MACs at 224 of the registered model
    paper_gflops: float
    paper_top1: float
    paper_top1_std: float | None
    top1: list[float] = field(default_factory=list)  # measured, one value per finished seed
    run_params_m: float | None = None  # the network as trained (small-input stem, dataset's classes)
    run_mflops: float | None = None  # its MACs at the training resolution

    @property
    def top1_mean(self) -> float:
        return statistics.fmean(self.top1) if self.top1 else math.nan

    @property
    def top1_std(self) -> float:
        """Sample standard deviation over seeds (0 for a single seed, NaN without results)."""
        if len(self.top1) > 1:
            return statistics.stdev(self.top1)
        return 0.0 if self.top1 else math.nan

    @classmethod
    def from_step(cls, regime: str, step: RoadmapStep) -> "StepResult":
        with torch.device("meta"):  # sizes and MACs only: no weights are allocated
            model = build_model(step.config)
        return cls(
            regime=regime, step=step.name, change=step.change, adopted=step.adopted, builds_on=step.builds_on,
            params_m=count_params(model) / 1e6, gflops=count_flops(model, 224) / 1e9,
            paper_gflops=step.paper_gflops, paper_top1=step.paper_top1, paper_top1_std=step.paper_top1_std,
        )


def ladder(regime: str = "r50", steps: list[str] | None = None) -> list[StepResult]:
    """The steps of a regime (all, or the named ones in ladder order) with params and MACs, no results yet."""
    return [StepResult.from_step(regime, s) for s in roadmap_steps(regime) if steps is None or s.name in steps]


def _pm(mean: float, std: float | None, digits: int = 2) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}f}" if std is None or math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_ladder(rows: list[StepResult]) -> str:
    """The plain-text table printed by `convnext roadmap --list`."""
    header = ("step", "what changed", "adopted", "params (M)", "GFLOPs ours", "GFLOPs paper", "paper top-1")
    body = [
        (r.step, r.change, "yes" if r.adopted else "no", f"{r.params_m:.2f}", f"{r.gflops:.3f}",
         f"{r.paper_gflops:.2f}", _pm(r.paper_top1, r.paper_top1_std))
        for r in rows
    ]
    widths = [max(len(row[i]) for row in body + [header]) for i in range(len(header))]
    fmt = "  ".join(f"{{:<{w}}}" if i < 3 else f"{{:>{w}}}" for i, w in enumerate(widths))
    lines = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
    return "\n".join(lines + [fmt.format(*row) for row in body])


_CSV_FIELDS = [
    "regime", "step", "change", "adopted", "builds_on", "params_m", "gflops", "paper_gflops", "run_params_m",
    "run_mflops", "top1_mean", "top1_std", "n_seeds", "top1_seeds", "paper_top1", "paper_top1_std",
]


def write_csv(rows: list[StepResult], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for r in rows:
            writer.writerow({
                "regime": r.regime, "step": r.step, "change": r.change, "adopted": int(r.adopted),
                "builds_on": r.builds_on or "", "params_m": r.params_m, "gflops": r.gflops,
                "paper_gflops": r.paper_gflops,
                "run_params_m": "" if r.run_params_m is None else r.run_params_m,
                "run_mflops": "" if r.run_mflops is None else r.run_mflops,
                "top1_mean": r.top1_mean, "top1_std": r.top1_std, "n_seeds": len(r.top1),
                "top1_seeds": ";".join(repr(t) for t in r.top1), "paper_top1": r.paper_top1,
                "paper_top1_std": "" if r.paper_top1_std is None else r.paper_top1_std,
            })


def read_csv(path: str | Path) -> list[StepResult]:
    """Inverse of `write_csv` (to redraw a chart or table from a finished experiment)."""
    def opt(v: str) -> float | None:
        return float(v) if v else None

    with open(path, newline="") as f:
        return [
            StepResult(
                regime=d["regime"], step=d["step"], change=d["change"], adopted=d["adopted"] == "1",
                builds_on=d["builds_on"] or None, params_m=float(d["params_m"]), gflops=float(d["gflops"]),
                paper_gflops=float(d["paper_gflops"]), paper_top1=float(d["paper_top1"]),
                paper_top1_std=opt(d["paper_top1_std"]),
                top1=[float(t) for t in d["top1_seeds"].split(";") if t],
                run_params_m=opt(d["run_params_m"]), run_mflops=opt(d["run_mflops"]),
            )
            for d in csv.DictReader(f)
        ]


def _deltas(rows: list[StepResult]) -> dict[str, tuple[float, float, float]]:
    """(ours, paper, our seed noise) top-1 change of each step against the step it builds on, where both ran.

    The noise is the larger seed std of the two steps (0 with single seeds).
    """
    by_name = {r.step: r for r in rows}
    out = {}
    for r in rows:
        parent = by_name.get(r.builds_on or "")
        if parent is not None and r.top1 and parent.top1:
            out[r.step] = (r.top1_mean - parent.top1_mean, r.paper_top1 - parent.paper_top1,
                           max(r.top1_std, parent.top1_std))
    return out


def write_markdown(rows: list[StepResult], path: str | Path, title: str = "Modernization roadmap",
                   run_desc: str = "") -> None:
    """`results.md`: the table, then how the measured step-to-step changes compare with the paper's."""
    deltas = _deltas(rows)
    lines = [f"# {title}", ""]
    if run_desc:
        lines += [run_desc, ""]
    lines += [
        "| step | what changed | adopted | params (M) at 224 / as trained | GFLOPs@224 ours / paper | "
        "MFLOPs as trained | top-1 (%) | Δ vs builds-on | paper top-1 | paper Δ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        d = deltas.get(r.step)
        lines.append(
            f"| {r.step} | {r.change} | {'yes' if r.adopted else 'no'} | {r.params_m:.2f} / "
            f"{'-' if r.run_params_m is None else f'{r.run_params_m:.2f}'} | "
            f"{r.gflops:.2f} / {r.paper_gflops:.2f} | {'-' if r.run_mflops is None else f'{r.run_mflops:.1f}'} | "
            f"{_pm(r.top1_mean, r.top1_std)} (n={len(r.top1)}) | {'-' if d is None else f'{d[0]:+.2f}'} | "
            f"{_pm(r.paper_top1, r.paper_top1_std)} | {'-' if d is None else f'{d[1]:+.2f}'} |"
        )
    if deltas:
        # Steps whose paper change is within the paper's own seed noise have no direction to compare.
        flat = [s for s, (_, paper, _) in deltas.items() if round(abs(paper), 2) < PAPER_FLAT]  # 2 decimals, as printed
        judged = {s: d for s, d in deltas.items() if s not in flat}
        differ = [s for s, (ours, paper, _) in judged.items() if (ours > 0) != (paper > 0)]
        noisy = [s for s, (ours, _, noise) in deltas.items() if abs(ours) < noise]
        lines += [
            "",
            f"Direction of each step's top-1 change against the step it builds on: agrees with the paper for "
            f"{len(judged) - len(differ)} of {len(judged)} steps"
            + (f", differs for {', '.join(differ)}" if differ else "")
            + (f"; flat in the paper (|Δ| < {PAPER_FLAT}): {', '.join(flat)}." if flat else "."),
        ]
        if noisy:
            lines.append(f"Measured changes smaller than the seed std of the two steps (not resolved by this run): "
                         f"{', '.join(noisy)}.")
    Path(path).write_text("\n".join(lines) + "\n")


def _accuracy_limits(values: list[float], errs: list[float]) -> tuple[float, float]:
    """x-axis range of a top-1 panel: the bars with their error bars plus a margin, never past 100 %."""
    spans = [(v - (e or 0), v + (e or 0)) for v, e in zip(values, errs) if not math.isnan(v)]
    if not spans:
        return 0.0, 100.0
    lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
    margin = max(0.5, 0.1 * (hi - lo))
    return max(0.0, lo - margin), min(100.0, hi + margin)


def plot_roadmap(rows: list[StepResult], path: str | Path, title: str = "", dataset: str = "this run",
                 settings: str = "") -> None:
    """Figure-2-style chart: measured top-1 per step (left), the paper's ImageNet top-1 (right), GFLOPs beside.

    Non-adopted steps are hatched, as in the paper. Error bars are the sample std over seeds (ours)
    and the paper's reported std; the caption says so and gives `settings` (how the runs were made).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(rows)
    y = list(range(n))[::-1]  # first step at the top
    fig, (ax_ours, ax_paper) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.42 * n + 2.2)), layout="constrained")
    seeds = sorted({len(r.top1) for r in rows if r.top1})
    panels = [
        (ax_ours, [r.top1_mean for r in rows], [r.top1_std for r in rows], "tab:blue", f"top-1 (%), {dataset}"),
        (ax_paper, [r.paper_top1 for r in rows], [r.paper_top1_std or 0.0 for r in rows], "tab:gray",
         "top-1 (%), paper, ImageNet-1K"),
    ]
    for ax, values, errs, color, xlabel in panels:
        left, right = _accuracy_limits(values, errs)
        for yi, r, v, e in zip(y, rows, values, errs):
            if math.isnan(v):
                ax.text(left, yi, "  not run", va="center", fontsize=8, color="0.4")
                continue
            ax.barh(yi, v - left, left=left, height=0.7, color=color if r.adopted else "white",
                    edgecolor=color, hatch=None if r.adopted else "///", xerr=e or None, ecolor="0.3", capsize=2)
            # value inside the bar's end, so that the axis need not run past the data for labels
            ax.text(v - (e or 0) - 0.01 * (right - left), yi, f"{v:.2f}", va="center", ha="right", fontsize=7,
                    color="white" if r.adopted else "0.2")
        ax.set_xlim(left, right)
        ax.set_ylim(-0.6, n - 0.4)
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    ax_ours.set_yticks(y, [r.step for r in rows])
    # GFLOPs (ours, at 224) on the right-hand side, as the paper writes them inside its bars.
    ax_paper.set_yticks(y, [f"{r.gflops:.2f} GFLOPs" for r in rows])
    ax_paper.yaxis.tick_right()
    ax_paper.tick_params(axis="y", length=0, labelsize=8)
    seed_text = "/".join(map(str, seeds)) if seeds else "no"
    caption = (f"Error bars: sample std over seeds ({seed_text} seed(s) per step; none with one seed), "
               "paper: its reported std. Axes span the data with a margin (bars do not start at 0).")
    if settings:
        caption = f"Run: {settings}\n{caption}"
    fig.legend(handles=[Patch(facecolor="white", edgecolor="0.3", hatch="///", label="not adopted")],
               loc="outside lower right", fontsize=8)
    fig.text(0.01, 0.0, caption, fontsize=7.5, ha="left", va="bottom", wrap=True)
    fig.get_layout_engine().set(rect=(0, 0.07, 1, 0.93))  # room for the caption under the panels
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
