"""``dicebench experiment`` and ``dicebench figures``: run, store and draw the synthetic experiments."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from .cli import command
from .experiments import EXPERIMENTS, SCALE_NAMES


@command("experiment")
def _experiment(parser: argparse.ArgumentParser):
    parser.description = ("Run synthetic experiments, store <out>/<name>/results.parquet, claims.json, manifest.json "
                          "and figures, and print every claim. Exit 1 when a verification fails; a failed "
                          "hypothesis is a finding, reported as FAILED (exit 0).")
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment, or all of them")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--impl", default="vectorized", help="Dice implementation used by the losses")
    parser.add_argument("--out", type=Path, default=Path("results/experiments"), help="results folder")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the tasks in N local processes (default 1: in this process); results do not change")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run the tasks on this existing Dask distributed cluster instead; results do not change")
    parser.add_argument("--no-figures", action="store_true", help="skip drawing the figures")

    def handle(args: argparse.Namespace) -> int:
        from dice_impls import get_implementation

        from .storage import run_experiment

        get_implementation(args.impl)  # an unknown name fails before any work
        if args.workers < 1:
            parser.error(f"--workers must be at least 1, got {args.workers}")
        if args.scheduler is not None and args.workers != 1:
            parser.error("give --workers (local processes) or --scheduler (a Dask cluster), not both")
        names = list(EXPERIMENTS) if args.name == "all" else [args.name]
        failed = []
        start = time.perf_counter()
        where = f"Dask cluster {args.scheduler}" if args.scheduler else f"{args.workers} worker(s)"
        for name in names:
            df, claims, manifest = run_experiment(name, args.out, scale=args.scale, seed=args.seed, impl=args.impl,
                                                  workers=args.workers, scheduler=args.scheduler)
            if not args.no_figures:
                EXPERIMENTS[name].figures(df, args.out / name)
            print(f"{name} ({args.scale}, seed {args.seed}, {manifest['tasks']} tasks on {where}, "
                  f"{manifest['wall_time_s']:.1f} s)")
            for claim in claims:
                print("  " + claim_line(claim))
            failed += [c for c in claims if c.kind == "verification" and not c.passed]
        print(f"{len(names)} experiment(s) in {time.perf_counter() - start:.1f} s; results in {args.out}")
        if failed:
            print(f"{len(failed)} verification(s) failed:")
            for claim in failed:
                print("  " + claim_line(claim))
            return 1
        return 0

    return handle


def claim_line(claim) -> str:
    """``OUTCOME id [stage]: statement: value v (CI lo..hi) op threshold``."""
    ci = f" (95% CI {claim.ci_low:.4g}..{claim.ci_high:.4g})" if claim.ci_low is not None else ""
    stage = f" [{claim.stage}]" if claim.stage else ""
    return (f"{claim.outcome} {claim.id}{stage}: {claim.statement}: value {claim.value:.4g}{ci}, "
            f"required {claim.op} {claim.threshold:g}")


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
