"""``dicebench experiment``: run, store and draw the synthetic experiments."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import List, Optional

from dice_impls import IMPLEMENTATIONS

from .errors import UsageError
from .experiments import EXPERIMENTS, SCALE_NAMES

DESCRIPTION = "Run synthetic experiments, store the results, print every claim (exit 1: a verification failed)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=[*EXPERIMENTS, "all"], help="experiment, or all of them")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="small")
    parser.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    parser.add_argument("--impl", choices=IMPLEMENTATIONS, default="vectorized", help="Dice implementation used by the losses")
    parser.add_argument("--out", type=Path, default=Path("reports/experiments"),
                        help="results folder (default reports/experiments; the committed ones: results/experiments)")
    parser.add_argument("--workers", type=int, default=1,
                        help="run the tasks in N local processes (default 1: in this process); the results do not change")
    parser.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                        help="run the tasks on this existing Dask distributed cluster instead; the results do not change")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the tasks an earlier run into the same --out finished (kept in OUT/.task-cache/, "
                             "keyed by task, config and code); the results do not change")
    parser.add_argument("--no-figures", action="store_true", help="skip drawing the figures")


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.scheduler is not None and args.workers != 1:
        raise UsageError("give --workers (local processes) or --scheduler (a Dask cluster), not both")
    if args.scheduler is not None and "://" not in args.scheduler:
        raise UsageError(f"--scheduler must be an address such as tcp://HOST:PORT, got {args.scheduler!r}")
    names = list(EXPERIMENTS) if args.name == "all" else [args.name]
    return run_and_print(names, args.out, scale=args.scale, seed=args.seed, impl=args.impl, workers=args.workers,
                         scheduler=args.scheduler, figures=not args.no_figures, resume=args.resume)


def run_and_print(names: List[str], out: Path, scale: str, seed: int, impl: str = "vectorized", workers: int = 1,
                  scheduler: Optional[str] = None, figures: bool = True, resume: bool = False) -> int:
    """Run and store each experiment (with ``resume``, its tasks already cached under ``out`` are
    not rerun), print every claim, then Holm-adjust the primary hypotheses of every experiment
    stored under ``out`` as one family (the study's) and print them; 1 when a verification failed."""
    from .storage import adjust_stored_primaries, run_experiment

    failed = []
    start = time.perf_counter()
    where = f"Dask cluster {scheduler}" if scheduler else f"{workers} worker(s)"
    for name in names:
        df, claims, manifest = run_experiment(name, out, scale=scale, seed=seed, impl=impl, workers=workers,
                                              scheduler=scheduler, resume=resume)
        if figures:
            EXPERIMENTS[name].figures(df, out / name)
        print(f"{name} ({scale}, seed {seed}, {manifest['tasks']} tasks on {where}, {manifest['wall_time_s']:.1f} s)")
        for claim in claims:
            print("  " + claim_line(claim))
        failed += [c for c in claims if c.kind == "verification" and not c.passed]
    print(f"{len(names)} experiment(s) in {time.perf_counter() - start:.1f} s; results in {out}")
    primaries = adjust_stored_primaries(out)
    if primaries:
        print(f"primary hypotheses: Holm over the {len(primaries)} stored under {out}")
        for claim in primaries:
            print("  " + claim_line(claim))
    if failed:
        print(f"{len(failed)} verification(s) failed:")
        for claim in failed:
            print("  " + claim_line(claim))
        return 1
    return 0


def claim_line(claim) -> str:
    """``OUTCOME id (primary) [stage]: statement: value v (95% CI lo..hi), p, Holm-adjusted p, required op threshold``."""
    ci = f" (95% CI {claim.ci_low:.4g}..{claim.ci_high:.4g})" if claim.ci_low is not None else ""
    p = f", p = {claim.p_value:.3g}" if claim.p_value is not None else ""
    p += f", Holm-adjusted p = {claim.p_adjusted:.3g}" if claim.p_adjusted is not None else ""
    stage = f" [{claim.stage}]" if claim.stage else ""
    primary = " (primary)" if claim.primary else ""
    return (f"{claim.outcome} {claim.id}{primary}{stage}: {claim.statement}: value {claim.value:.4g}{ci}{p}, "
            f"required {claim.op} {claim.threshold:g}")
