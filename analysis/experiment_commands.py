"""``dicebench experiment``: run, store and draw the synthetic experiments."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List

from dice_impls import IMPLEMENTATIONS

from .experiments import EXPERIMENTS, SCALE_NAMES

DESCRIPTION = "Run synthetic experiments, store the results, print every claim (exit status 1 when one fails)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment, or all of them")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, default="vectorized", help="Dice implementation used by the losses")
    parser.add_argument("--out", type=Path, default=Path("results/experiments"), help="results folder")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads, fixed for determinism (1: two threads ran ~30x slower on a busy 2-core machine)")
    parser.add_argument("--no-figures", action="store_true", help="skip drawing the figures")


def main(args: argparse.Namespace) -> int:
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    return run_and_print(names, args.out, scale=args.scale, seed=args.seed, impl=args.impl, threads=args.threads,
                         figures=not args.no_figures)


def run_and_print(names: List[str], out: Path, scale: str, seed: int, impl: str = "vectorized", threads: int = 1,
                  figures: bool = True) -> int:
    """Run and store each experiment, print every claim; 1 when a claim failed."""
    from .storage import run_experiment

    failed = []
    start = time.perf_counter()
    for name in names:
        df, claims, manifest = run_experiment(name, out, scale=scale, seed=seed, impl=impl, threads=threads)
        if figures:
            EXPERIMENTS[name].figures(df, out / name)
        print(f"{name} ({scale}, seed {seed}, {manifest['wall_time_s']:.1f} s)")
        for claim in claims:
            print(f"  {'PASS' if claim.passed else 'FAIL'} {claim.id}: {claim.statement}: value {claim.value:.4g}")
            if not claim.passed:
                failed.append(claim)
    print(f"{len(names)} experiment(s) in {time.perf_counter() - start:.1f} s; results in {out}")
    if failed:
        print(f"{len(failed)} claim(s) failed:")
        for claim in failed:
            print(f"  {claim.id}: {claim.statement}: value {claim.value:.4g}")
        return 1
    return 0
