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


TABLE_BEGIN = "<!-- hypotheses table: written by `dicebench experiment-table` from the stored claims; do not edit by hand -->"
TABLE_END = "<!-- end of hypotheses table -->"


def stored_claims(results: Path) -> list:
    """``(experiment, claim dict)`` for every claim stored under ``results``, in the registry's order."""
    from .storage import load_results

    stored = sorted(p.parent.name for p in Path(results).glob("*/claims.json"))
    names = [n for n in EXPERIMENTS if n in stored] + [n for n in stored if n not in EXPERIMENTS]
    return [(name, claim) for name in names for claim in load_results(results, name)[1]]


def hypotheses_markdown(results: Path) -> str:
    """The Markdown table of every stored hypothesis (source, stage, threshold, value, CI, p, outcome),
    followed by a line counting the verifications."""

    def number(value) -> str:
        return "—" if value is None else f"{value:.4g}"

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    claims = stored_claims(results)
    lines = ["| hypothesis | experiment | stage | statement | source | required | value | 95% CI | p | outcome |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in claims:
        if c["kind"] == "hypothesis":
            ci = f"{number(c['ci_low'])} .. {number(c['ci_high'])}" if c["ci_low"] is not None else "—"
            outcome = "SUPPORTED" if c["passed"] else "**FAILED**"
            lines.append("| " + " | ".join(cell(x) for x in (
                f"`{c['id']}`", name, c["stage"] or "—", c["statement"], c["source"], f"{c['op']} {c['threshold']:g}",
                number(c["value"]), ci, number(c["p_value"]), outcome)) + " |")
    verifications = [(name, c) for name, c in claims if c["kind"] == "verification"]
    broken = [c["id"] for _, c in verifications if not c["passed"]]
    lines += ["", f"Verifications: {len(verifications) - len(broken)}/{len(verifications)} passed"
              + (f" (FAIL: {', '.join(broken)})" if broken else "") + "."]
    return "\n".join(lines)


def with_table(doc: str, markdown: str, doc_name: str) -> str:
    """``doc`` with the text between the table markers replaced by ``markdown``."""
    if doc.count(TABLE_BEGIN) != 1 or doc.count(TABLE_END) != 1 or doc.index(TABLE_BEGIN) > doc.index(TABLE_END):
        raise ValueError(f"{doc_name} needs one line {TABLE_BEGIN!r} and, after it, one line {TABLE_END!r} "
                         "around the place the table goes")
    head, rest = doc.split(TABLE_BEGIN)
    return head + TABLE_BEGIN + "\n" + markdown + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]


@command("experiment-table")
def _experiment_table(parser: argparse.ArgumentParser):
    parser.description = ("Write the table of every stored hypothesis (and a count of the verifications) into a "
                          "Markdown document, between its table markers, so the document matches the results.")
    parser.add_argument("--results", type=Path, default=Path("results/experiments"), help="folder given to --out")
    parser.add_argument("--doc", type=Path, default=Path("docs/experiments.md"), help="document to update")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the document is out of date")

    def handle(args: argparse.Namespace) -> int:
        if not any(Path(args.results).glob("*/claims.json")):
            parser.error(f"no stored claims under {args.results}")
        if not args.doc.is_file():
            parser.error(f"no document {args.doc}")
        doc = args.doc.read_text()
        try:
            updated = with_table(doc, hypotheses_markdown(args.results), str(args.doc))
        except ValueError as error:
            parser.error(str(error))
        if args.check:
            if updated != doc:
                print(f"{args.doc}: the hypotheses table differs from the claims under {args.results}; "
                      "run dicebench experiment-table")
                return 1
            print(f"{args.doc}: up to date")
            return 0
        args.doc.write_text(updated)
        print(f"{args.doc}: table written from {args.results}")
        return 0

    return handle
