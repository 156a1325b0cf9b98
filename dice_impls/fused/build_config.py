"""How the C++ extension is compiled: read by setup.py (without importing the package) and by
``cpu.jit_build`` (the fallback build), so both compile the same thing."""

import hashlib
from pathlib import Path

# fused_ops.cpp: the operators; fused_scoring.cpp: the scoring of the sums; gradient_pool.cpp: the
# gradient buffers; folded_autograd.cpp: eager_loss's C++ autograd node; fused_kernels_*.cpp:
# fused_kernels.h for the baseline, AVX2, AVX-512.
SOURCES = ["fused_ops.cpp", "fused_scoring.cpp", "gradient_pool.cpp", "folded_autograd.cpp",
           "fused_kernels_baseline.cpp", "fused_kernels_avx2.cpp", "fused_kernels_avx512.cpp"]
HEADERS = ["fused_args.h", "fused_kernels.h", "fused_scoring.h", "gradient_pool.h"]
# Portable: no -march (the wider instruction sets come from the per-file target pragmas, chosen
# at run time); -fno-trapping-math lets the exp's selects vectorise; -fopenmp for `omp simd` and
# at::parallel_for (the process uses the libgomp torch ships).
CFLAGS = ["-O3", "-g0", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# The library embeds "<DIGEST_MARKER><digest of sources and flags>"; a library whose digest is not
# that of the sources beside it is stale (edited after the build) and is not loaded. One identifier,
# stringified in C++: a quoted define would lose its quotes in the shell that ninja runs.
DIGEST_MARKER = "DICE_FUSED_SOURCE_DIGEST_"


def source_digest(directory: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((Path(directory) / name).read_bytes())
    digest.update(" ".join(CFLAGS + LDFLAGS).encode())
    return digest.hexdigest()[:16]


def digest_define(directory: Path) -> str:
    return f"-DFUSED_SOURCE_DIGEST={DIGEST_MARKER}{source_digest(directory)}"
