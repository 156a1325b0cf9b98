"""``dicebench experiment-table``: the stored hypotheses as a Markdown table inside a document."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .errors import UsageError
from .experiments import EXPERIMENTS

DESCRIPTION = "Write the stored hypotheses as a Markdown table into a document (docs/experiments.md)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--results", type=Path, default=Path("results/experiments"), help="folder given to --out")
    parser.add_argument("--doc", type=Path, default=Path("docs/experiments.md"), help="document to update")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when the document is out of date")


def main(args: argparse.Namespace) -> int:
    if not any(Path(args.results).glob("*/claims.json")):
        raise UsageError(f"no stored claims under {args.results}")
    if not args.doc.is_file():
        raise UsageError(f"no document {args.doc}")
    doc = args.doc.read_text()
    try:
        updated = with_table(doc, hypotheses_markdown(args.results), str(args.doc))
    except ValueError as error:
        raise UsageError(str(error)) from None
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


TABLE_BEGIN = "<!-- hypotheses table: written by `dicebench experiment-table` from the stored claims; do not edit by hand -->"
TABLE_END = "<!-- end of hypotheses table -->"


def stored_claims(results: Path) -> list:
    """``(experiment, claim dict)`` for every claim stored under ``results``, in the registry's order."""
    from .storage import load_results

    stored = sorted(p.parent.name for p in Path(results).glob("*/claims.json"))
    names = [n for n in EXPERIMENTS if n in stored] + [n for n in stored if n not in EXPERIMENTS]
    return [(name, claim) for name in names for claim in load_results(results, name)[1]]


def hypotheses_markdown(results: Path) -> str:
    """The Markdown tables of the stored claims: the primary hypotheses, then every hypothesis
    (source, stage, threshold, value, CI, n, p, Holm-adjusted p, outcome), a line counting the
    verifications, and each training experiment's failure rates."""

    def number(value) -> str:
        return "—" if value is None else f"{value:.4g}"

    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    def row(values) -> str:
        return "| " + " | ".join(cell(x) for x in values) + " |"

    def outcome(c) -> str:
        return "SUPPORTED" if c["passed"] else "**FAILED**"

    def ci(c) -> str:
        return f"{number(c['ci_low'])} .. {number(c['ci_high'])}" if c["ci_low"] is not None else "—"

    claims = stored_claims(results)
    hypotheses = [(name, c) for name, c in claims if c["kind"] == "hypothesis"]
    lines = ["**Primary hypotheses** (Holm over all of them; SUPPORTED needs the interval and a Holm-adjusted p ≤ 0.025):",
             "", "| hypothesis | statement | required | value | 95% CI | n | p | p (Holm) | outcome |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [row((f"`{c['id']}`", c["statement"], f"{c['op']} {c['threshold']:g}", number(c["value"]), ci(c),
                   number(c.get("n_seeds")), number(c["p_value"]), number(c.get("p_adjusted")), outcome(c)))
              for _, c in hypotheses if c.get("primary")]
    lines += ["", "**Every hypothesis** (exploratory unless marked primary):", "",
              "| hypothesis | experiment | stage | statement | source | required | value | 95% CI | n | p | outcome |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row((f"`{c['id']}`" + (" (primary)" if c.get("primary") else ""), name, c["stage"] or "—", c["statement"],
                   c["source"], f"{c['op']} {c['threshold']:g}", number(c["value"]), ci(c), number(c.get("n_seeds")),
                   number(c["p_value"]), outcome(c))) for name, c in hypotheses]
    verifications = [(name, c) for name, c in claims if c["kind"] == "verification"]
    broken = [c["id"] for _, c in verifications if not c["passed"]]
    lines += ["", f"Verifications: {len(verifications) - len(broken)}/{len(verifications)} passed"
              + (f" (FAIL: {', '.join(broken)})" if broken else "") + "."]
    return "\n".join(lines + failure_markdown(results))


def failure_markdown(results: Path) -> list:
    """Per training experiment stored under ``results``: its runs' failures by loss and setting (S8: by cell)."""
    from .experiments.common import evaluated_failures, selection_grid
    from .storage import load_results

    def mean(value) -> str:
        return "—" if math.isnan(value) else f"{value:.3f}"

    def setting(record: dict, columns) -> list:
        return [f"{record[c]:.4g}" if isinstance(record[c], float) else str(record[c]) for c in columns]

    lines = []
    for name in [n for n in EXPERIMENTS if (Path(results) / n / "results.parquet").is_file()]:
        df = load_results(results, name)[0]
        found = evaluated_failures(df)
        if found is None:
            continue
        by, metric, rates = found
        lines += ["", f"**{name}: failures** (collapsed: one class on every validation pixel and gradient norm < 1e-9; "
                  f"mean {metric} of the runs that trained / of all runs):", "",
                  "| " + " | ".join([*by, "runs", "collapsed (all bg)", "diverged", "capped", "collapse rate [95% CI]",
                                     "mean, trained", "mean, all"]) + " |", "|" + "---|" * (len(by) + 7)]
        for r in rates.to_dict("records"):
            lines.append("| " + " | ".join([*setting(r, by), str(r["runs"]), f"{r['collapsed']} ({r['collapsed_background']})",
                                            str(r["diverged"]), str(r["capped"]),
                                            f"{r['rate']:.2f} [{r['rate_low']:.2f}, {r['rate_high']:.2f}]",
                                            mean(r[metric + "_trained"]), mean(r[metric + "_all"])]) + " |")
        grid = selection_grid(df)
        if grid is not None:
            columns, table = grid
            lines += ["", f"**{name}: learning-rate selection** (selection seeds; the rate with the best median "
                      "validation DSC at its best threshold is used for every evaluation seed):", "",
                      "| " + " | ".join([*columns, "rate", "runs", "failed", "median validation DSC (best threshold)", "chosen"]) + " |",
                      "|" + "---|" * (len(columns) + 5)]
            for r in table.to_dict("records"):
                lines.append("| " + " | ".join([*setting(r, columns), f"{r['lr']:g}", str(r["runs"]), str(r["failed"]),
                                                mean(r["median_val_dsc"]), "**yes**" if r["chosen"] else ""]) + " |")
    return lines


def with_table(doc: str, markdown: str, doc_name: str) -> str:
    """``doc`` with the text between the table markers replaced by ``markdown``."""
    if doc.count(TABLE_BEGIN) != 1 or doc.count(TABLE_END) != 1 or doc.index(TABLE_BEGIN) > doc.index(TABLE_END):
        raise ValueError(f"{doc_name} needs one line {TABLE_BEGIN!r} and, after it, one line {TABLE_END!r} "
                         "around the place the table goes")
    head, rest = doc.split(TABLE_BEGIN)
    return head + TABLE_BEGIN + "\n" + markdown + "\n" + TABLE_END + rest.split(TABLE_END, 1)[1]
