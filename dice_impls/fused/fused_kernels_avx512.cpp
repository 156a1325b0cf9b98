// The kernels for x86-64 CPUs with AVX-512 (F, BW, DQ, VL; Skylake-SP, Zen 4 and later);
// selected at run time by fused_ops.cpp. Everything included before the pragma keeps the
// baseline target.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "fused_args.h"
#define FUSED_F16C 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")
#endif
#define FUSED_ISA isa_avx512
#include "fused_kernels.h"
#if defined(__clang__)
#pragma clang attribute pop
#endif
#endif
