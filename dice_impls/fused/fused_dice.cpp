// Fused soft-Dice statistics and gradient on the CPU: no one-hot, no stored probabilities.
//
// The pixels of each image are cut into fixed tasks of whole blocks (independent of the thread
// count, so results are bitwise reproducible); a block of pixels is activated into a small
// C x block tile that stays in cache, summed in the compute type and added to double task
// partials, which are reduced in task order. Inner loops run over contiguous pixels and are
// written for the compiler's vectoriser (`omp simd`, a polynomial exp it can inline, loop-invariant
// values in locals, accumulators as plain locals of small functions so they stay in registers).
// Registered as torch.ops.dice_fused.* with the light ATen headers (no pybind, no torch/extension.h)
// so the first-use JIT build stays short.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__F16C__)
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace {

constexpr int64_t TASK_PIXELS = 16384;  // enough work per task, and many tasks
constexpr int64_t MAX_BLOCK = 256;      // pixels per block (a power of two, divides TASK_PIXELS)
constexpr int64_t TILE_FLOATS = 4096;   // the C x block tile: 16 KiB, within L1 for any C

enum Activation { SOFTMAX = 0, SIGMOID = 1, IDENTITY = 2 };

// exp(x) for x <= 0, all the kernels need (softmax after subtracting the max, sigmoid through
// exp(-|x|)): exp(x) = 2^n * P(r), n = round(x / ln 2), r = x - n ln 2 (one fused multiply-add),
// |r| <= ln(2)/2, P the degree-5 minimax polynomial of exp on that interval. Max relative error
// 2.1e-7 for x > -10 and 4.3e-7 down to -87.3 (docs/performance.md); 0 below -87.34, where 2^n
// would leave the normal floats (exp < 1.2e-38 there). Branch-free so the loops around it vectorise.
static inline __attribute__((always_inline)) float exp_approx(float x) {
  // n = round(x / ln 2) by the 1.5 * 2^23 trick: the low mantissa bits of `shifted` hold n.
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float n = shifted - 12582912.0f;
  const float r = x - n * 0.693147182464599609375f;
  float y = 8.297654800117016e-3f;
  y = y * r + 4.191538318991661e-2f;
  y = y * r + 1.6667574644088745e-1f;
  y = y * r + 4.9998894333839417e-1f;
  y = y * r + 9.999997019767761e-1f;
  y = y * r + 1.0000001192092896f;
  int32_t bits;
  std::memcpy(&bits, &shifted, sizeof(bits));
  bits = (bits << 23) + (127 << 23);  // 2^n: n sits in the low bits of `shifted`
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.33654f ? 0.0f : y * scale;
}
static inline double exp_approx(double x) { return std::exp(x); }

// Float32 arithmetic for fp32/bf16/fp16 logits, float64 for float64 ones (gradcheck).
template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// Half logits to float and float gradients back, a block at a time in loops that vectorise (c10's
// conversions are scalar): a bfloat16 is the top half of a float32 (rounded to nearest even on
// the way back, as c10 does); float16 uses the F16C instructions where the build has them.
void to_float(const c10::BFloat16* x, float* out, int64_t len) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(x);
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const uint32_t wide = static_cast<uint32_t>(bits[v]) << 16;
    std::memcpy(out + v, &wide, sizeof(float));
  }
}
void from_float(const float* x, c10::BFloat16* out, int64_t len) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(out);
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    uint32_t wide;
    std::memcpy(&wide, x + v, sizeof(wide));
    const uint32_t rounded = (wide + 0x7FFFu + ((wide >> 16) & 1u)) >> 16;
    bits[v] = x[v] != x[v] ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
  }
}
void to_float(const c10::Half* x, float* out, int64_t len) {
  int64_t v = 0;
#if defined(__F16C__)
  for (; v + 8 <= len; v += 8)
    _mm256_storeu_ps(out + v, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + v))));
#endif
  for (; v < len; ++v) out[v] = static_cast<float>(x[v]);
}
void from_float(const float* x, c10::Half* out, int64_t len) {
  int64_t v = 0;
#if defined(__F16C__)
  for (; v + 8 <= len; v += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + v), _mm256_cvtps_ph(_mm256_loadu_ps(x + v), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; v < len; ++v) out[v] = static_cast<c10::Half>(x[v]);
}

// Asks for the cache lines of the next block of every channel while this one is computed: C
// strided streams are more than the hardware prefetcher follows.
template <bool WRITE, typename T>
inline void prefetch_block(const T* x, int64_t C, int64_t V, int64_t len) {
  for (int64_t c = 0; c < C; ++c) {
    const char* row = reinterpret_cast<const char*>(x + c * V);
    for (int64_t byte = 0; byte < len * int64_t(sizeof(T)); byte += 64) __builtin_prefetch(row + byte, WRITE, 3);
  }
}

struct Params {
  int64_t N, C, V;
  int activation;
  bool squared;
  bool has_ignore;
  int64_t ignore_index;
  int64_t label_low, label_high;  // labels in [low, high) mark class (label - low); 1 channel: {1}
  int64_t block;                  // pixels per block
};

// Labels of one block -> class (-1: none, or an ignored pixel) and keep mask (0 on ignored pixels).
template <typename label_t, typename acc_t>
void read_labels(const Params& P, const void* labels, int64_t offset, int64_t len, int32_t* cls, acc_t* keep) {
  const label_t* y = static_cast<const label_t*>(labels) + offset;
  prefetch_block<false>(y + len, 1, 0, len);
  // Locals and non-short-circuit tests keep this loop branch-free (vectorised).
  const int64_t low = P.label_low, classes = P.label_high - P.label_low, ignore = P.ignore_index;
  const bool has_ignore = P.has_ignore;
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const int64_t label = static_cast<int64_t>(y[v]);
    const bool ignored = has_ignore & (label == ignore);
    const bool in_range = static_cast<uint64_t>(label - low) < static_cast<uint64_t>(classes);
    cls[v] = in_range & !ignored ? static_cast<int32_t>(label - low) : -1;
    keep[v] = ignored ? acc_t(0) : acc_t(1);
  }
}

template <typename acc_t>
using LabelReader = void (*)(const Params&, const void*, int64_t, int64_t, int32_t*, acc_t*);

template <typename acc_t>
LabelReader<acc_t> label_reader(at::ScalarType type) {
  switch (type) {
    case at::kByte: return read_labels<uint8_t, acc_t>;
    case at::kChar: return read_labels<int8_t, acc_t>;
    case at::kShort: return read_labels<int16_t, acc_t>;
    case at::kInt: return read_labels<int32_t, acc_t>;
    case at::kLong: return read_labels<int64_t, acc_t>;
    default: TORCH_CHECK(false, "fused CPU kernel: unsupported label dtype ", type);
  }
}

// One block of pixels, activated: p_c = u_c * r with u = exp(x - max_c x) and r = 1 / sum_c u for
// softmax (the normalisation is folded into the passes that read u), u = p and r = 1 otherwise.
template <typename scalar_t, typename acc_t>
struct Tile {
  const Params& P;
  LabelReader<acc_t> labels;
  std::vector<acc_t> u, r, keep, work;
  std::vector<int32_t> cls;
  acc_t probe = 0;  // sum of x - x: NaN iff some logit is NaN/inf

  Tile(const Params& params, LabelReader<acc_t> reader)
      : P(params), labels(reader), u(params.C * params.block), r(params.block), keep(params.block),
        work(2 * params.block), cls(params.block) {}

  // Loads pixels [v0, v0 + len) of image n.
  template <bool PROBE>
  void load(const scalar_t* logits, const void* label_data, int64_t n, int64_t v0, int64_t len) {
    const int64_t C = P.C, V = P.V, B = P.block;
    labels(P, label_data, n * V + v0, len, cls.data(), keep.data());
    const scalar_t* x = logits + n * C * V + v0;
    prefetch_block<false>(x + B, C, V, len);
    // The logits in the compute type: read in place, or converted into u first (half types).
    const acc_t* src;
    int64_t stride;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      src = x, stride = V;
    } else {
      for (int64_t c = 0; c < C; ++c) to_float(x + c * V, u.data() + c * B, len);
      src = u.data(), stride = B;
    }
    acc_t* rv = r.data();
    acc_t pr = 0;
    if (P.activation == SOFTMAX) {
      acc_t* mx = work.data();
      acc_t* s = work.data() + B;
      std::copy(src, src + len, mx);
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* xc = src + c * stride;
#pragma omp simd reduction(+ : pr)
        for (int64_t v = 0; v < len; ++v) {
          if (PROBE) pr += xc[v] - xc[v];
          mx[v] = xc[v] > mx[v] ? xc[v] : mx[v];
        }
      }
      std::fill(s, s + len, acc_t(0));
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* xc = src + c * stride;
        acc_t* uc = u.data() + c * B;
#pragma omp simd  // uc may be xc (half types, in place): elementwise, so no loop-carried dependence
        for (int64_t v = 0; v < len; ++v) {
          const acc_t e = exp_approx(xc[v] - mx[v]);
          uc[v] = e;
          s[v] += e;
        }
      }
#pragma omp simd
      for (int64_t v = 0; v < len; ++v) rv[v] = acc_t(1) / s[v];
    } else {
      const bool sigmoid = P.activation == SIGMOID;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* xc = src + c * stride;
        acc_t* uc = u.data() + c * B;
        if (sigmoid) {
#pragma omp simd reduction(+ : pr)
          for (int64_t v = 0; v < len; ++v) {
            if (PROBE) pr += xc[v] - xc[v];
            const acc_t e = exp_approx(-std::abs(xc[v]));  // sigmoid(x) = 1 / (1 + e) or e / (1 + e)
            uc[v] = (xc[v] >= acc_t(0) ? acc_t(1) : e) / (acc_t(1) + e);
          }
        } else {
#pragma omp simd reduction(+ : pr)
          for (int64_t v = 0; v < len; ++v) {
            if (PROBE) pr += xc[v] - xc[v];
            uc[v] = xc[v];
          }
        }
      }
      std::fill(rv, rv + len, acc_t(1));
    }
    probe += pr;
  }
};

// Fixed work split: tasks of whole blocks inside one image, the same for any thread count.
struct Split {
  int64_t tasks_per_image, task_len;
  explicit Split(int64_t V) {
    task_len = TASK_PIXELS;
    tasks_per_image = std::max<int64_t>(1, (V + task_len - 1) / task_len);
  }
};

// Adds one block's sums to acc = (tp[C], ps[C], gs[C]): tp_c = sum [cls = c] r u_c,
// ps_c = sum keep r^k u_c^k, gs_c = sum [cls = c]. Accumulators are locals (kept in registers).
template <bool SQUARED, typename acc_t>
void block_sums(const acc_t* u, const acc_t* r, const acc_t* keep, const int32_t* cls, int64_t C, int64_t B,
                int64_t len, acc_t* weight, double* acc) {
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) weight[v] = SQUARED ? keep[v] * r[v] * r[v] : keep[v] * r[v];
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* uc = u + c * B;
    const int32_t cc = static_cast<int32_t>(c);
    acc_t tp = 0, ps = 0, gs = 0;
#pragma omp simd reduction(+ : tp, ps, gs)
    for (int64_t v = 0; v < len; ++v) {
      const acc_t g = cls[v] == cc ? acc_t(1) : acc_t(0);
      tp += g * r[v] * uc[v];
      ps += SQUARED ? weight[v] * uc[v] * uc[v] : weight[v] * uc[v];
      gs += g;
    }
    acc[c] += tp;
    acc[C + c] += ps;
    acc[2 * C + c] += gs;
  }
}

template <typename scalar_t>
void statistics_kernel(const Params& P, const scalar_t* logits, const void* labels, at::ScalarType label_type,
                       double* out, double* probe_out) {
  using acc_t = typename Compute<scalar_t>::type;
  const Split split(P.V);
  const int64_t tasks = P.N * split.tasks_per_image;
  const int64_t C = P.C, B = P.block;
  const bool squared = P.squared;
  const LabelReader<acc_t> reader = label_reader<acc_t>(label_type);
  std::vector<double> partial(tasks * 3 * C, 0.0);
  std::vector<double> probes(tasks, 0.0);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Tile<scalar_t, acc_t> tile(P, reader);
    std::vector<acc_t> weight(B);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / split.tasks_per_image;
      const int64_t v_begin = (t % split.tasks_per_image) * split.task_len;
      const int64_t v_end = std::min(P.V, v_begin + split.task_len);
      double* acc = partial.data() + t * 3 * C;
      tile.probe = 0;
      for (int64_t v0 = v_begin; v0 < v_end; v0 += B) {
        const int64_t len = std::min(B, v_end - v0);
        tile.template load<true>(logits, labels, n, v0, len);
        if (squared)
          block_sums<true>(tile.u.data(), tile.r.data(), tile.keep.data(), tile.cls.data(), C, B, len, weight.data(), acc);
        else
          block_sums<false>(tile.u.data(), tile.r.data(), tile.keep.data(), tile.cls.data(), C, B, len, weight.data(), acc);
      }
      probes[t] = tile.probe;
    }
  });
  // Fixed-order reduction of the task partials: out is (3, N, C).
  std::fill(out, out + 3 * P.N * C, 0.0);
  double probe = 0;
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t n = t / split.tasks_per_image;
    for (int64_t s = 0; s < 3; ++s)
      for (int64_t c = 0; c < C; ++c) out[(s * P.N + n) * C + c] += partial[(t * 3 + s) * C + c];
    probe += probes[t];
  }
  *probe_out = probe;
}

// One channel of dL/dlogits for a block: keep * dp/dlogit * (q - dot), q = ak p^(k-1) + [cls = c] bc
// (ak = k a_c), dp/dlogit = p (softmax), p (1 - p) (sigmoid) or 1 (identity), p = r u.
template <int ACTIVATION, bool SQUARED, typename acc_t>
void channel_gradient(const acc_t* uc, const acc_t* r, const acc_t* keep, const int32_t* cls, const acc_t* dot,
                      acc_t ak, acc_t bc, int32_t c, int64_t len, acc_t* out) {
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const acc_t p = r[v] * uc[v];
    const acc_t q = (SQUARED ? ak * p : ak) + (cls[v] == c ? bc : acc_t(0));
    if (ACTIVATION == SOFTMAX) {
      out[v] = keep[v] * p * (q - dot[v]);
    } else if (ACTIVATION == SIGMOID) {
      out[v] = keep[v] * p * (acc_t(1) - p) * q;
    } else {
      out[v] = keep[v] * q;
    }
  }
}

template <typename acc_t>
using ChannelGradient = void (*)(const acc_t*, const acc_t*, const acc_t*, const int32_t*, const acc_t*, acc_t, acc_t,
                                 int32_t, int64_t, acc_t*);

template <typename acc_t>
ChannelGradient<acc_t> channel_gradient_for(int activation, bool squared) {
  if (activation == SOFTMAX)
    return squared ? channel_gradient<SOFTMAX, true, acc_t> : channel_gradient<SOFTMAX, false, acc_t>;
  if (activation == SIGMOID)
    return squared ? channel_gradient<SIGMOID, true, acc_t> : channel_gradient<SIGMOID, false, acc_t>;
  return squared ? channel_gradient<IDENTITY, true, acc_t> : channel_gradient<IDENTITY, false, acc_t>;
}

// Softmax: dot = sum_c p_c q_c = r sum_c u_c q_c, q_c = ak_c (r u_c)^(k-1) + [cls = c] b_c.
template <bool SQUARED, typename acc_t>
void softmax_dot(const acc_t* u, const acc_t* r, const int32_t* cls, const acc_t* ak, const acc_t* b, int64_t C,
                 int64_t B, int64_t len, acc_t* dot) {
  std::fill(dot, dot + len, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* uc = u + c * B;
    const acc_t akc = ak[c], bc = b[c];
    const int32_t cc = static_cast<int32_t>(c);
#pragma omp simd
    for (int64_t v = 0; v < len; ++v)
      dot[v] += uc[v] * ((SQUARED ? akc * r[v] * uc[v] : akc) + (cls[v] == cc ? bc : acc_t(0)));
  }
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) dot[v] *= r[v];
}

template <typename scalar_t>
void gradient_kernel(const Params& P, const scalar_t* logits, const void* labels, at::ScalarType label_type,
                     const double* a, const double* b, scalar_t* grad) {
  using acc_t = typename Compute<scalar_t>::type;
  const Split split(P.V);
  const int64_t tasks = P.N * split.tasks_per_image;
  const int64_t C = P.C, V = P.V, B = P.block;
  const bool squared = P.squared, softmax = P.activation == SOFTMAX;
  const LabelReader<acc_t> reader = label_reader<acc_t>(label_type);
  const ChannelGradient<acc_t> channel = channel_gradient_for<acc_t>(P.activation, squared);
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    Tile<scalar_t, acc_t> tile(P, reader);
    std::vector<acc_t> dot(B, acc_t(0)), ak(C), bc(C), row(std::is_same_v<scalar_t, acc_t> ? 0 : B);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / split.tasks_per_image;
      const int64_t v_begin = (t % split.tasks_per_image) * split.task_len;
      const int64_t v_end = std::min(V, v_begin + split.task_len);
      for (int64_t c = 0; c < C; ++c) {  // dL/dp_c = q_c = a_c k p_c^(k-1) + b_c g_c
        ak[c] = static_cast<acc_t>(a[n * C + c] * (squared ? 2 : 1));
        bc[c] = static_cast<acc_t>(b[n * C + c]);
      }
      for (int64_t v0 = v_begin; v0 < v_end; v0 += B) {
        const int64_t len = std::min(B, v_end - v0);
        tile.template load<false>(logits, labels, n, v0, len);
        prefetch_block<true>(grad + n * C * V + v0 + B, C, V, len);
        if (softmax)
          (squared ? softmax_dot<true, acc_t> : softmax_dot<false, acc_t>)(
              tile.u.data(), tile.r.data(), tile.cls.data(), ak.data(), bc.data(), C, B, len, dot.data());
        for (int64_t c = 0; c < C; ++c) {
          scalar_t* out = grad + (n * C + c) * V + v0;
          acc_t* dst;
          if constexpr (std::is_same_v<scalar_t, acc_t>) dst = out; else dst = row.data();
          channel(tile.u.data() + c * B, tile.r.data(), tile.keep.data(), tile.cls.data(), dot.data(), ak[c], bc[c],
                  static_cast<int32_t>(c), len, dst);
          if constexpr (!std::is_same_v<scalar_t, acc_t>) from_float(row.data(), out, len);
        }
      }
    }
  });
}

Params make_params(const at::Tensor& logits, int64_t activation, bool squared, bool has_ignore,
                   int64_t ignore_index) {
  Params P;
  P.N = logits.size(0);
  P.C = logits.size(1);
  P.V = logits.numel() / std::max<int64_t>(1, P.N * P.C);
  P.activation = static_cast<int>(activation);
  P.squared = squared;
  P.has_ignore = has_ignore;
  P.ignore_index = ignore_index;
  P.label_low = P.C == 1 ? 1 : 0;
  P.label_high = P.C == 1 ? 2 : P.C;
  P.block = MAX_BLOCK;
  while (P.block > 16 && P.block * P.C > TILE_FLOATS) P.block /= 2;
  return P;
}

void check_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.is_contiguous() && labels.is_contiguous(), "fused CPU kernel needs contiguous inputs");
  TORCH_CHECK(logits.dim() >= 2 && labels.numel() * logits.size(1) == logits.numel(),
              "fused CPU kernel: labels must have one entry per pixel of the logits");
}

// A fresh gradient buffer is faulted in page by page as the kernel first writes it; on Linux, ask
// for transparent huge pages on its 2 MiB-aligned interior (512x fewer faults) before writing.
void advise_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t huge = uintptr_t(1) << 21;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + huge - 1) & ~(huge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(huge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);  // a hint: errors ignored
#endif
}

}  // namespace

// Returns (stats (3, N, C) float64, probe float64 scalar).
std::tuple<at::Tensor, at::Tensor> statistics(at::Tensor logits, at::Tensor labels, int64_t activation,
                                      bool squared, bool has_ignore, int64_t ignore_index) {
  check_inputs(logits, labels);
  const Params P = make_params(logits, activation, squared, has_ignore, ignore_index);
  auto out = at::empty({3, P.N, P.C}, logits.options().dtype(at::kDouble));
  auto probe = at::empty({}, logits.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "fused_dice_statistics", [&] {
    statistics_kernel(P, logits.data_ptr<scalar_t>(), labels.data_ptr(), labels.scalar_type(), out.data_ptr<double>(),
                      probe.data_ptr<double>());
  });
  return std::make_tuple(out, probe);
}

// a = dL/dpred_sum, b = dL/dintersection, both (N, C) float64; writes dL/dlogits into grad.
void gradient(at::Tensor logits, at::Tensor labels, at::Tensor a, at::Tensor b, at::Tensor grad, int64_t activation,
              bool squared, bool has_ignore, int64_t ignore_index) {
  check_inputs(logits, labels);
  const Params P = make_params(logits, activation, squared, has_ignore, ignore_index);
  TORCH_CHECK(a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble && a.is_contiguous() &&
                  b.is_contiguous() && a.numel() == P.N * P.C && b.numel() == P.N * P.C,
              "fused CPU kernel: a and b must be contiguous float64 (N, C)");
  TORCH_CHECK(grad.is_contiguous() && grad.sizes() == logits.sizes() && grad.scalar_type() == logits.scalar_type(),
              "fused CPU kernel: grad must be contiguous, shaped and typed like the logits");
  advise_huge_pages(grad.data_ptr(), grad.nbytes());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "fused_dice_gradient", [&] {
    gradient_kernel(P, logits.data_ptr<scalar_t>(), labels.data_ptr(), labels.scalar_type(), a.data_ptr<double>(),
                    b.data_ptr<double>(), grad.data_ptr<scalar_t>());
  });
}

TORCH_LIBRARY(dice_fused, m) {
  m.def("statistics(Tensor logits, Tensor labels, int activation, bool squared, bool has_ignore, int ignore_index)"
        " -> (Tensor, Tensor)", &statistics);
  m.def("gradient(Tensor logits, Tensor labels, Tensor a, Tensor b, Tensor(a!) grad, int activation, bool squared,"
        " bool has_ignore, int ignore_index) -> ()", &gradient);
}
