"""How the C++ extension is compiled: read by setup.py (without importing the package) and by
``cpu.jit_build`` (the fallback build), so both compile the same thing."""

# fused_dice.cpp: the operators; fused_kernels_*.cpp: fused_kernels.h for the baseline, AVX2, AVX-512.
SOURCES = ["fused_dice.cpp", "fused_kernels_baseline.cpp", "fused_kernels_avx2.cpp", "fused_kernels_avx512.cpp"]
HEADERS = ["fused_args.h", "fused_kernels.h"]
# Portable: no -march (the wider instruction sets come from the per-file target pragmas, chosen
# at run time); -fno-trapping-math lets the exp's selects vectorise; -fopenmp for `omp simd` and
# at::parallel_for (the process uses the libgomp torch ships).
CFLAGS = ["-O3", "-g0", "-fno-trapping-math", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
