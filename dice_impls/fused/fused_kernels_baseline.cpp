// The kernels for the build's baseline (x86-64 SSE2, aarch64 NEON): what every CPU can run.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "fused_args.h"
#define FUSED_ISA isa_baseline
#include "fused_kernels.h"
