"""Name this machine for asv, stably and without paths (``python -m benchmarks.asv_machine [NAME]``).

asv files results under a machine name, by default the host name, which changes from one virtual
machine to the next although the hardware does not, and ``asv machine --yes --machine NAME``
stores nothing but the name. This records NAME (default ``<cpu vendor>-<cores>core``, e.g.
``intel-2core``) with the CPU, core count, OS, architecture and RAM (in GiB, one spelling) that
asv detects, in asv's per-user machine file, and prints the name.
"""

from __future__ import annotations

import re
import sys
from typing import List, Optional


def detected() -> dict:
    """asv's own description of this machine, RAM in whole GiB."""
    from asv.machine import Machine

    info = Machine.get_defaults()
    info["ram"] = f"{round(int(info['ram']) / 2**30)} GiB"
    return info


def default_name(info: dict) -> str:
    vendor = (re.findall(r"[a-z]+", info["cpu"].lower()) or ["cpu"])[0]
    return f"{vendor}-{info['num_cpu']}core"


def define(name: Optional[str] = None) -> str:
    """Store (or refresh) the machine entry in asv's machine file; return its name."""
    from asv.machine import MachineCollection

    info = detected()
    info["machine"] = name or default_name(info)
    MachineCollection.save(info["machine"], info)  # ~/.asv-machine.json, other entries kept
    return info["machine"]


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(define(argv[0] if argv else None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
