"""Which asv benchmarks each job runs: the ``--bench`` regexes, defined here only.

asv searches them in ``module.Class.method(param, ...)``, so a parameterised benchmark's end is
anchored with ``\\(``, not ``$``. The CPU grid leaves out ``bench_cuda``, whose combinations are
all n/a without a GPU but would each cost a process. This module imports nothing heavy: the
Makefile reads a selection with ``python -m benchmarks.selections NAME``.
"""

from __future__ import annotations

import sys

HEADLINE_SHAPE_2D = "4x4x512x512"  # benchmarks.benchmarks.common.HEADLINE_SHAPES[0] (a test keeps them equal)

SELECTIONS = {
    # make asv, make asv-curated, dicebench run: the CPU grid.
    "cpu": r"^bench_(loss|scaling|training)\.",
    # make asv-gpu: the CUDA grid.
    "gpu": r"^bench_cuda\.",
    # make asv-quick (CI): one quick pass over the loss grid, every implementation and dtype.
    "smoke": r"^bench_loss\.Grid\.time_forward_backward\(",
    # dicebench run --quick: the 2-D headline cell of every implementation in float32, Dice and Dice+CE.
    "quick": rf"^bench_loss\.(Headline|Compound)\.time_forward_backward\(.*'float32', '{HEADLINE_SHAPE_2D}'\)$",
    # make asv-continuous: the headline forward+backward timings in float32.
    "continuous": r"^bench_loss\.Headline\.time_forward_backward\(.*'float32'",
}


def main(argv=None) -> int:
    names = sys.argv[1:] if argv is None else argv
    if len(names) != 1 or names[0] not in SELECTIONS:
        print(f"usage: python -m benchmarks.selections {{{','.join(SELECTIONS)}}}", file=sys.stderr)
        return 2
    print(SELECTIONS[names[0]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
