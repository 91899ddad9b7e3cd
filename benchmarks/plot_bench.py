"""Draw saved `convnext bench --json` reports as one chart, a panel per file.

    python benchmarks/plot_bench.py REPORT.json [REPORT.json ...] --out chart.png [--titles "a" "b"]

Each panel is one run (one process, interleaved rounds): bars are median img/s, whiskers the slowest..fastest
round, labels the speed-up ours / each implementation as `convnext bench` printed it. Runs are not merged: numbers
from different processes are not compared on one axis.
"""
import argparse
import json
import sys

from convnext.bench.plot import check_plot_path, plot_reports
from convnext.errors import UserError


def read_report(path: str) -> dict:
    """A `convnext bench --json` report, or a one-line error naming the file."""
    try:
        with open(path) as f:
            report = json.load(f)
    except (OSError, ValueError) as e:  # missing, unreadable, not JSON
        raise UserError(f"{path}: {e}") from None
    results = report.get("results") if isinstance(report, dict) else None
    if not isinstance(results, dict) or not all(isinstance(r, dict) and "img_per_s" in r for r in results.values()):
        raise UserError(f"{path}: not a `convnext bench --json` report of a timed run (no 'results' with img/s)")
    return report


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", help="JSON files written by convnext bench --json")
    p.add_argument("--out", required=True, help="chart file (.png, .svg, .pdf, .jpg)")
    p.add_argument("--titles", nargs="*", default=None, help="one title per panel (default: model, batch, dtype)")
    args = p.parse_args()
    try:
        check_plot_path(args.out, "--out")
        reports = [read_report(path) for path in args.reports]
        print(f"wrote {plot_reports(reports, args.out, titles=args.titles)}")
    except (UserError, ValueError) as e:
        sys.exit(f"plot_bench: {e}")


if __name__ == "__main__":
    main()
