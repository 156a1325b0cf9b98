"""``dicebench figures``: redraw every experiment's figures from its stored results alone."""

from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UsageError

DESCRIPTION = "Redraw every experiment's figures (PNG + SVG) from its stored results.parquet alone."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results/experiments"), help="folder given to --out")


def main(args: argparse.Namespace) -> int:
    from .experiments import EXPERIMENTS
    from .storage import load_results

    found = [name for name in EXPERIMENTS if (args.results / name / "results.parquet").is_file()]
    if not found:
        raise UsageError(f"no experiment results under {args.results}")
    for name in found:
        df, _, _ = load_results(args.results, name)
        for path in EXPERIMENTS[name].figures(df, args.results / name):
            print(path)
    return 0
