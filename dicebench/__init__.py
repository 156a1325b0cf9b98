"""The ``dicebench`` command: the suite's command line, run against a checkout of the repository.

An installation holds the library, ``dice_impls``, and this launcher. The suite (``analysis/``,
``benchmarks/``, ``asv.conf.json``, the committed ``results/``) stays in the checkout and is
never installed, so that its generic package names never enter site-packages. The launcher finds
the checkout, puts it first on ``sys.path`` of this process only, and hands over to
``analysis.cli``. The checkout is, in this order:

1. ``$DICEBENCH_CHECKOUT``, when set;
2. the current directory or the nearest folder above it that holds the suite;
3. the folder this package sits in, for an editable install (``pip install -e .``, ``make``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

CHECKOUT_VARIABLE = "DICEBENCH_CHECKOUT"


def is_checkout(folder: Path) -> bool:
    return (folder / "analysis" / "cli.py").is_file() and (folder / "dice_impls" / "__init__.py").is_file()


def find_checkout(cwd: Path, environ: Mapping[str, str], installed_in: Path) -> Optional[Path]:
    """The checkout to run (see the module's docstring), or None."""
    if environ.get(CHECKOUT_VARIABLE):
        folder = Path(environ[CHECKOUT_VARIABLE]).expanduser().resolve()
        return folder if is_checkout(folder) else None
    cwd = cwd.resolve()
    return next((folder for folder in (cwd, *cwd.parents, installed_in.resolve()) if is_checkout(folder)), None)


def main(argv: Optional[List[str]] = None) -> int:
    checkout = find_checkout(Path.cwd(), os.environ, Path(__file__).resolve().parent.parent)
    if checkout is None:
        where = (f"{CHECKOUT_VARIABLE}={os.environ[CHECKOUT_VARIABLE]} is not a checkout of dicebench"
                 if os.environ.get(CHECKOUT_VARIABLE) else "no checkout of dicebench at or above the current directory")
        print(f"dicebench: error: {where}; the suite's commands run from a checkout (git clone, then cd into it, "
              f"or set {CHECKOUT_VARIABLE}); this installation holds the library dice_impls alone", file=sys.stderr)
        return 2
    sys.path.insert(0, str(checkout))
    from analysis.cli import main as dispatch

    return dispatch(argv)
