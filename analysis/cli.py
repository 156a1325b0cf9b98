"""The ``dicebench`` command line."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Dict, List, Optional

COMMANDS: Dict[str, Callable[[argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {}


def command(name: str):
    """Register ``setup(parser) -> handler`` as subcommand ``name``."""

    def decorate(setup):
        COMMANDS[name] = setup
        return setup

    return decorate


@command("implementations")
def _implementations(parser: argparse.ArgumentParser):
    parser.description = "List the Dice implementations and the peer presets."

    def handle(args: argparse.Namespace) -> int:
        from dice_impls import IMPLEMENTATIONS, PRESETS

        for name, impl in IMPLEMENTATIONS.items():
            print(f"{name:12s} {impl.description}")
        print()
        for name, fields in PRESETS.items():
            print(f"preset {name:8s} {fields}")
        return 0

    return handle


from . import compare, report, run  # noqa: E402,F401  (registers report, run, compare)
from . import experiment_commands  # noqa: E402,F401  (registers experiment, figures)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicebench", description="Soft Dice: implementations, benchmarks, experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, setup in COMMANDS.items():
        sub_parser = sub.add_parser(name)
        sub_parser.set_defaults(handler=setup(sub_parser))
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    # Run as a script this module is ``__main__``; the subcommands register into ``analysis.cli``.
    from analysis.cli import main as registered_main

    sys.exit(registered_main())
