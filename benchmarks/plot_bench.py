"""Draw saved `convnext bench --json` reports as one chart, a panel per file.

    python benchmarks/plot_bench.py REPORT.json [REPORT.json ...] --out chart.png [--titles "a" "b"]

Each panel is one run (one process, interleaved rounds): bars are median img/s, whiskers the slowest..fastest
round, labels the speed-up ours / each implementation as `convnext bench` printed it. Runs are not merged: numbers
from different processes are not compared on one axis.
"""
import argparse
import json

from convnext.bench.plot import check_plot_path, plot_reports


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reports", nargs="+", help="JSON files written by convnext bench --json")
    p.add_argument("--out", required=True, help="chart file (.png, .svg, .pdf, .jpg)")
    p.add_argument("--titles", nargs="*", default=None, help="one title per panel (default: model, batch, dtype)")
    args = p.parse_args()
    check_plot_path(args.out, "--out")
    reports = []
    for path in args.reports:
        with open(path) as f:
            reports.append(json.load(f))
    print(f"wrote {plot_reports(reports, args.out, titles=args.titles)}")


if __name__ == "__main__":
    main()
