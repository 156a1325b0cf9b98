"""``dicebench implementations``: the Dice implementations and the peer presets."""

from __future__ import annotations

import argparse

DESCRIPTION = "List the Dice implementations and the peer presets."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No options."""


def main(args: argparse.Namespace) -> int:
    from dice_impls import IMPLEMENTATIONS, PRESETS

    for name, impl in IMPLEMENTATIONS.items():
        print(f"{name:12s} {impl.description}")
    print()
    for name, fields in PRESETS.items():
        print(f"preset {name:8s} {fields}")
    return 0
