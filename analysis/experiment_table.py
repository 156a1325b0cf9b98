"""``dicebench experiment-table``: the stored hypotheses as a Markdown table inside a document."""

from __future__ import annotations

import argparse
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
