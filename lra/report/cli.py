"""``lra-report``: build the report from the command line (Hydra-style ``key=value`` or ``--key value``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import pandas as pd

from .build import build_report, rebuild_command

_KEYS = ("out", "name", "compare", "tolerance")


def _hydra_style(argv: list[str]) -> list[str]:
    """``out=DIR`` -> ``--out DIR`` for the keys this command takes; other arguments unchanged."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        out += [f"--{key}", value] if eq and not arg.startswith("-") and key in _KEYS else [arg]
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="lra-report",
                                 description="Build a markdown report, figures and a tidy CSV from result records.")
    ap.add_argument("inputs", nargs="*", default=["results"],
                    help="record files or directories (searched recursively), or tidy CSVs (default: results)")
    ap.add_argument("--out", default="report", help="output directory (default: report)")
    ap.add_argument("--name", default="report.md",
                    help="file name of the markdown report in the output directory (default: report.md; "
                         "the committed one: REPORT.md); the HTML copy gets the same stem")
    ap.add_argument("--compare", default=None, help="baseline: records dir, previous report dir, or tidy.csv")
    ap.add_argument("--tolerance", type=float, default=0.05,
                    help="regression threshold as a fraction of the baseline value (default 0.05)")
    ap.add_argument("--no-figures", action="store_true", help="tables only (figures are the slow part)")
    ap.add_argument("--fail-on-regression", action="store_true",
                    help="exit with status 1 if the comparison flags a regression")
    return ap


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """``lra-report``'s arguments (``key=value`` or ``--key value``); exits with status 2 on bad ones."""
    return parser().parse_args(_hydra_style(list(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    """``lra-report [inputs...] out=DIR [name=report.md] [compare=BASELINE] [tolerance=0.05]``.

    Exit status: 0 built; 1 regressions with ``--fail-on-regression``; 2 bad input (including inputs
    that hold no record), with a one-line error on stderr and nothing written.
    The committed report: ``lra-report results out=results name=REPORT.md``.
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        path = build_report(args.inputs, args.out, args.compare, args.tolerance,
                            figure_formats=() if args.no_figures else ("png", "svg"), name=args.name,
                            command=rebuild_command(args.inputs, args.out, args.name, args.compare,
                                                    args.tolerance, not args.no_figures))
    except (FileNotFoundError, ValueError) as e:
        print(f"lra-report: error: {e}", file=sys.stderr)
        return 2
    print(path)
    if args.fail_on_regression and args.compare is not None:
        cmp = pd.read_csv(Path(args.out) / "compare.csv")
        if len(cmp) and cmp["regression"].astype(bool).any():
            print(f"{int(cmp['regression'].astype(bool).sum())} regression(s); see {path}", file=sys.stderr)
            return 1
    return 0
