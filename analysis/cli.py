"""The ``dicebench`` command line: a dispatcher over the subcommand modules.

Each subcommand module in ``analysis/`` defines ``DESCRIPTION`` (its line in ``dicebench --help``),
``add_arguments(parser)`` and ``main(args) -> int``; it never imports this module. Exit status:

    0  done: nothing moved, every claim and benchmark passed
    1  a difference or a failed verification: compare found a change, a claim or a benchmark failed,
       audit found a defect
    2  a usage or input error: a bad option, a missing folder, an unknown name, a missing extra;
       a loss audit could not run

A usage or input error is one line on stderr, ``dicebench <cmd>: error: <message>``, without a
traceback (``analysis.errors.UsageError``, argparse's own errors, a missing extra).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import UsageError

# command: (its module in analysis/, the extras of pyproject.toml it needs)
SUBCOMMANDS = {
    "implementations": ("implementations", ()),
    "experiment": ("experiment_commands", ("experiments",)),
    "figures": ("figures", ("report",)),
    "experiment-table": ("experiment_table", ("experiments",)),
    "report": ("report", ("report",)),
    "compare": ("compare", ("report",)),
    "run": ("run", ("bench", "experiments", "report")),
    "audit": ("audit_command", ()),
}
EXIT_USAGE = 2  # 0 and 1 are the subcommands' own (see above)
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


class Parser(argparse.ArgumentParser):
    """argparse's errors as one line, like every other usage error of the command line."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def pyproject() -> Optional[dict]:
    """The checkout's pyproject.toml; None on Python 3.10, whose standard library reads no TOML."""
    try:
        import tomllib
    except ModuleNotFoundError:
        return None
    return tomllib.loads(PYPROJECT.read_text())


def version() -> str:
    project = pyproject()
    return project["project"]["version"] if project else metadata.version("dicebench")


def build_parser(selected: Optional[str] = None) -> argparse.ArgumentParser:
    """Every subcommand; only ``selected``'s module is imported when one is given (all for --help)."""
    parser = Parser(prog="dicebench", description="Soft Dice loss: implementations, benchmarks, experiments, report.",
                    epilog="Exit status: 0 ok, 1 a difference or a failed verification, 2 a usage or input error.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, (module_name, extras) in SUBCOMMANDS.items():
        if selected not in (None, name):
            sub.add_parser(name)  # not this call's command: its module stays unimported
            continue
        missing = missing_requirements(extras)
        if missing:  # listed in --help with what it needs; main() stops before parsing its arguments
            sub.add_parser(name, help=f"(unavailable: {needs_message(extras, missing)})")
            continue
        module = importlib.import_module(f"{__package__}.{module_name}")
        sub_parser = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION)
        module.add_arguments(sub_parser)
        sub_parser.set_defaults(main=module.main)
    return parser


def needs_message(extras: Sequence[str], missing: Sequence[str]) -> str:
    extras = ",".join(extras)
    return f"needs dicebench[{extras}] (missing: {', '.join(missing)}); in the checkout: pip install '.[{extras}]'"


def missing_requirements(extras: Sequence[str]) -> List[str]:
    """The distributions that ``extras`` of pyproject.toml name and this environment lacks."""
    project = pyproject() if extras else None
    if project is None:  # nothing needed, or Python 3.10: a missing module then fails at its import
        return []
    optional = project["project"]["optional-dependencies"]
    missing, pending, seen = [], list(extras), set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in optional[extra]:
            name = re.match(r"[A-Za-z0-9._-]+", requirement).group()
            if name == "dicebench":  # the project's own extras, named by another extra
                pending.extend(re.search(r"\[(.*?)\]", requirement).group(1).split(","))
                continue
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                missing.append(name)
    return sorted(set(missing))


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    if selected in SUBCOMMANDS:
        extras = SUBCOMMANDS[selected][1]
        missing = missing_requirements(extras)
        if missing:
            print(f"dicebench {selected}: error: {needs_message(extras, missing)}", file=sys.stderr)
            return EXIT_USAGE
    else:
        selected = None
    args = build_parser(selected).parse_args(argv)
    try:
        return args.main(args)
    except UsageError as error:
        print(f"dicebench {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
