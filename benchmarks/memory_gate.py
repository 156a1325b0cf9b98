"""CI's regression gate on memory: the peak bytes one forward+backward call adds above its inputs,
per implementation at two shapes, against a budget in sizes of the logits.

Unlike a timing this number is the same on a loaded machine (it counts bytes, through
``benchmarks.benchmarks.common.peak_rss_increase``), so a hard bound can fail CI without false alarms.

    python -m benchmarks.memory_gate          # prints every case; exit status 1 when one is over budget

Budgets (float32, in logit sizes; the measured values are in docs/benchmarks.md):

- ``fused``: 1.15. Its floor is the gradient it returns (one logit-sized tensor); the one-byte
  label codes its backward reads instead of the int64 labels add N·V bytes (1/16 of the float32
  logits at C = 4); the rest covers the per-class sums and the resolution of the measurement
  (measured 1.06-1.10). A stored (N, V) float32 intermediate (0.25 at C = 4) would exceed it.
- ``vectorized``, ``mixed``: 8. They keep softmax probabilities and a one-hot target for the
  backward pass (measured 4.6-7.2 in the committed grid); a ninth logit-sized tensor is a leak.
- ``naive``: not gated (Python loops; the large shapes are not run for it).

Each case runs in its own process, so no allocation of an earlier case is reused unseen.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Dict, List

SHAPES = ("4x4x512x512", "1x4x96x96x96")  # the headline shapes: 16 MiB and 14 MiB of float32 logits
BUDGET_X_LOGITS: Dict[str, float] = {"fused": 1.15, "vectorized": 8.0, "mixed": 8.0}


def measure(implementation: str, shape: str, dtype: str = "float32") -> dict:
    """One case in this process: peak bytes above the inputs, and that number in logit sizes."""
    from .benchmarks.common import LOSSES, fresh_gradients, make_inputs, peak_rss_increase, pin_threads

    pin_threads()
    loss = LOSSES[implementation]
    logits, labels = make_inputs(shape, dtype, requires_grad=True)

    def forward_backward():
        loss(logits, labels).backward()
        logits.grad = None

    forward_backward()  # first-call caches (and fused's kernel build) stay out of the number
    with fresh_gradients():  # fused's pooled gradient would otherwise be resident already (0x)
        peak = peak_rss_increase(forward_backward)
    logit_bytes = logits.numel() * logits.element_size()
    return dict(implementation=implementation, shape=shape, dtype=dtype, peak_bytes=peak,
                logit_bytes=logit_bytes, x_logits=peak / logit_bytes)


def run_all() -> List[dict]:
    """Every gated case, each in a fresh interpreter (``python -m benchmarks.memory_gate --one``)."""
    cases = []
    for implementation, budget in BUDGET_X_LOGITS.items():
        for shape in SHAPES:
            out = subprocess.run([sys.executable, "-m", "benchmarks.memory_gate", "--one", implementation, shape],
                                 capture_output=True, text=True, check=True).stdout
            case = json.loads(out.strip().splitlines()[-1])
            cases.append(dict(case, budget=budget, passed=case["x_logits"] <= budget))
    return cases


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory_gate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", nargs=2, metavar=("IMPLEMENTATION", "SHAPE"), help="measure one case, print JSON")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(*args.one)))
        return 0
    cases = run_all()
    for c in cases:
        print(f"{'ok  ' if c['passed'] else 'OVER'} {c['implementation']:10s} {c['shape']:14s} {c['dtype']}: "
              f"{c['peak_bytes'] / 2**20:6.1f} MiB above the inputs = {c['x_logits']:.2f}x logits (budget {c['budget']:g}x)")
    failed = [c for c in cases if not c["passed"]]
    print(f"memory gate: {len(cases) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
