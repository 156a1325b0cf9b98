"""``dicebench experiment`` and ``dicebench figures``: run, store and draw the synthetic experiments."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import command
from .experiments import EXPERIMENTS, SCALE_NAMES


@command("experiment")
def _experiment(parser: argparse.ArgumentParser):
    parser.description = ("Run synthetic experiments (DESIGN §6), store <out>/<name>/results.parquet, claims.json, "
                          "manifest.json and figures, and print every claim; exit 1 when a claim fails.")
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment, or all of them")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--impl", default="vectorized", help="Dice implementation used by the losses")
    parser.add_argument("--out", type=Path, default=Path("results/experiments"), help="results folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, fixed for determinism (1: two threads ran ~30x slower on a busy 2-core machine)")
    parser.add_argument("--no-figures", action="store_true", help="skip drawing the figures")

    def handle(args: argparse.Namespace) -> int:
        from dice_impls import get_implementation

        from .storage import run_experiment

        get_implementation(args.impl)  # an unknown name fails before any work
        names = list(EXPERIMENTS) if args.name == "all" else [args.name]
        failed = []
        start = time.perf_counter()
        for name in names:
            df, claims, manifest = run_experiment(name, args.out, scale=args.scale, seed=args.seed, impl=args.impl,
                                                  threads=args.threads)
            if not args.no_figures:
                EXPERIMENTS[name].figures(df, args.out / name)
            print(f"{name} ({args.scale}, seed {args.seed}, {manifest['wall_time_s']:.1f} s)")
            for claim in claims:
                print(f"  {'PASS' if claim.passed else 'FAIL'} {claim.id}: {claim.statement}: value {claim.value:.4g}")
                if not claim.passed:
                    failed.append(claim)
        print(f"{len(names)} experiment(s) in {time.perf_counter() - start:.1f} s; results in {args.out}")
        if failed:
            print(f"{len(failed)} claim(s) failed:")
            for claim in failed:
                print(f"  {claim.id}: {claim.statement}: value {claim.value:.4g}")
            return 1
        return 0

    return handle


@command("figures")
def _figures(parser: argparse.ArgumentParser):
    parser.description = "Redraw every experiment's figures (PNG + SVG) from its stored results.parquet alone."
    parser.add_argument("--results", type=Path, default=Path("results/experiments"), help="folder given to --out")

    def handle(args: argparse.Namespace) -> int:
        from .storage import load_results

        found = [name for name in EXPERIMENTS if (args.results / name / "results.parquet").is_file()]
        if not found:
            print(f"no experiment results under {args.results}")
            return 1
        for name in found:
            df, _, _ = load_results(args.results, name)
            for path in EXPERIMENTS[name].figures(df, args.results / name):
                print(path)
        return 0

    return handle
