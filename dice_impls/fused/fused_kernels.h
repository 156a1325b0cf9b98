// The hot loops of the fused CPU kernels, written once and compiled once per instruction set.
//
// fused_kernels_{baseline,avx2,avx512}.cpp each include this file inside their own namespace
// (FUSED_ISA), the wider ones under `#pragma GCC target`; fused_ops.cpp picks one at run time
// (cpuid). Nothing here includes ATen or the standard library's templates, and every helper has
// internal linkage: an inline function compiled for AVX-512 must never be merged by the linker
// with the baseline copy another file uses.
//
// The pixels of each image are cut into fixed tasks of whole blocks (independent of the thread
// count, so results are bitwise reproducible); a block of pixels is activated into a small
// C x block tile that stays in cache, summed in the compute type and added to double task
// partials. Inner loops run over contiguous pixels and are written for the compiler's vectoriser
// (`omp simd`, a polynomial exp and log it can inline, loop-invariant values in locals,
// accumulators as plain locals of small functions so they stay in registers).
//
// Includers provide <cstdint>, <cstring>, <cmath> and, on x86-64, <immintrin.h> first.

namespace FUSED_ISA {
namespace {

enum Activation { SOFTMAX = 0, SIGMOID = 1, IDENTITY = 2 };

struct BF16 { uint16_t bits; };
struct F16 { uint16_t bits; };

inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// exp(x) for x <= 80, all the kernels need (softmax with or without subtracting the max, sigmoid
// through exp(-|x|), the focal factor): exp(x) = 2^n * P(r), n = round(x / ln 2), r = x - n ln 2
// (one fused multiply-add), |r| <= ln(2)/2, P the degree-5 minimax polynomial of exp on that
// interval. Max relative error 2.1e-7 on [-10, 40], 3.1e-7 up to 80 and 4.3e-7 down to -87.3
// (docs/performance.md); 0 below -87.34, where 2^n would leave the normal floats (and above ~88
// 2^n wraps: callers clamp). Branch-free so the loops around it vectorise.
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

// log(x) for normal x > 0 (Cephes' logf: x = 2^e m, m in [sqrt(1/2), sqrt(2)), a degree-9
// polynomial in m - 1; max relative error ~1e-7). Branch-free; used per pixel, not per logit.
static inline __attribute__((always_inline)) float log_approx(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  bits = (bits & 0x807fffff) | 0x3f000000;  // mantissa in [0.5, 1)
  float m;
  std::memcpy(&m, &bits, sizeof(m));
  const bool low = m < 0.707106781186547524f;
  e = low ? e - 1.0f : e;
  const float t = low ? m + m - 1.0f : m - 1.0f;
  const float z = t * t;
  float y = 7.0376836292e-2f;
  y = y * t - 1.1514610310e-1f;
  y = y * t + 1.1676998740e-1f;
  y = y * t - 1.2420140846e-1f;
  y = y * t + 1.4249322787e-1f;
  y = y * t - 1.6668057665e-1f;
  y = y * t + 2.0000714765e-1f;
  y = y * t - 2.4999993993e-1f;
  y = y * t + 3.3333331174e-1f;
  y = y * t * z - 2.12194440e-4f * e - 0.5f * z;
  return t + y + 0.693359375f * e;
}
static inline double log_approx(double x) { return std::log(x); }

// Float32 arithmetic for fp32/bf16/fp16 logits, float64 for float64 ones (gradcheck).
template <typename T> struct Compute { using type = float; };
template <> struct Compute<double> { using type = double; };

// Half logits to float and float gradients back, a block at a time in loops that vectorise: a
// bfloat16 is the top half of a float32 (rounded to nearest even on the way back); float16 uses
// F16C where this file is compiled for it, else the branch-free conversions of the FP16 library.
static inline void to_float(const BF16* x, float* out, int64_t len) {
  const uint16_t* bits = reinterpret_cast<const uint16_t*>(x);
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const uint32_t wide = static_cast<uint32_t>(bits[v]) << 16;
    std::memcpy(out + v, &wide, sizeof(float));
  }
}
static inline void from_float(const float* x, BF16* out, int64_t len) {
  uint16_t* bits = reinterpret_cast<uint16_t*>(out);
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    uint32_t wide;
    std::memcpy(&wide, x + v, sizeof(wide));
    const uint32_t rounded = (wide + 0x7FFFu + ((wide >> 16) & 1u)) >> 16;
    bits[v] = x[v] != x[v] ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
  }
}
static inline float half_to_float(uint16_t h) {
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u, two_w = w + w;
  const uint32_t exp_offset = 0xE0u << 23;
  uint32_t bits = (two_w >> 4) + exp_offset;
  float normalized, denormalized;
  std::memcpy(&normalized, &bits, sizeof(bits));
  normalized *= 0x1.0p-112f;
  bits = (two_w >> 17) | (126u << 23);
  std::memcpy(&denormalized, &bits, sizeof(bits));
  denormalized -= 0.5f;
  uint32_t n, d;
  std::memcpy(&n, &normalized, sizeof(n));
  std::memcpy(&d, &denormalized, sizeof(d));
  const uint32_t result = sign | (two_w < (1u << 27) ? d : n);
  float out;
  std::memcpy(&out, &result, sizeof(out));
  return out;
}
static inline uint16_t float_to_half(float f) {
  float base = (__builtin_fabsf(f) * 0x1.0p+112f) * 0x1.0p-110f;
  uint32_t w;
  std::memcpy(&w, &f, sizeof(w));
  const uint32_t shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  const uint32_t bias_bits = (bias >> 1) + 0x07800000u;
  float bias_f;
  std::memcpy(&bias_f, &bias_bits, sizeof(bias_f));
  base = bias_f + base;
  uint32_t bits;
  std::memcpy(&bits, &base, sizeof(bits));
  const uint32_t exp_bits = (bits >> 13) & 0x00007C00u, mantissa_bits = bits & 0x00000FFFu;
  const uint32_t nonsign = exp_bits + mantissa_bits;
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}
static inline void to_float(const F16* x, float* out, int64_t len) {
  int64_t v = 0;
#if defined(FUSED_F16C)
  for (; v + 8 <= len; v += 8)
    _mm256_storeu_ps(out + v, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(x + v))));
#endif
  for (; v < len; ++v) out[v] = half_to_float(x[v].bits);
}
static inline void from_float(const float* x, F16* out, int64_t len) {
  int64_t v = 0;
#if defined(FUSED_F16C)
  for (; v + 8 <= len; v += 8)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + v), _mm256_cvtps_ph(_mm256_loadu_ps(x + v), _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; v < len; ++v) out[v].bits = float_to_half(x[v]);
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

// Scratch memory of one worker, freed on every exit path.
template <typename T>
struct Scratch {
  T* data;
  explicit Scratch(int64_t n) : data(new T[n > 0 ? n : 1]()) {}
  ~Scratch() { delete[] data; }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// Labels of one block -> class (-1: none, or an ignored or out-of-range pixel) and keep mask (0 on
// ignored pixels); returns the count of labels that are neither valid nor ignored when asked.
template <typename label_t, typename acc_t>
int64_t read_labels(const KernelArgs& P, int64_t offset, int64_t len, int32_t* cls, acc_t* keep, bool count_bad) {
  const label_t* y = static_cast<const label_t*>(P.labels) + offset;
  prefetch_block<false>(y + len, 1, 0, len);
  // Locals and non-short-circuit tests keep this loop branch-free (vectorised).
  const int64_t low = P.label_low, classes = P.label_high - P.label_low, ignore = P.ignore_index;
  const int64_t valid = P.valid_high;
  const bool has_ignore = P.has_ignore;
  int64_t bad = 0;
#pragma omp simd reduction(+ : bad)
  for (int64_t v = 0; v < len; ++v) {
    const int64_t label = static_cast<int64_t>(y[v]);
    const bool ignored = has_ignore & (label == ignore);
    const bool in_range = static_cast<uint64_t>(label - low) < static_cast<uint64_t>(classes);
    cls[v] = in_range & !ignored ? static_cast<int32_t>(label - low) : -1;
    keep[v] = ignored ? acc_t(0) : acc_t(1);
    bad += (!ignored & (static_cast<uint64_t>(label) >= static_cast<uint64_t>(valid))) ? 1 : 0;
  }
  return count_bad ? bad : 0;
}

// Label codes (fused_args.h) -> class and keep mask; never invalid (the statistics pass checked).
template <typename acc_t>
int64_t read_codes(const KernelArgs& P, int64_t offset, int64_t len, int32_t* cls, acc_t* keep) {
  const uint8_t* code = static_cast<const uint8_t*>(P.labels) + offset;
  prefetch_block<false>(code + len, 1, 0, len);
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    cls[v] = static_cast<int32_t>(code[v]) - 2 >= 0 ? static_cast<int32_t>(code[v]) - 2 : -1;
    keep[v] = code[v] != 0 ? acc_t(1) : acc_t(0);
  }
  return 0;
}

// The codes of a block, from its class and keep mask.
template <typename acc_t>
void write_codes(const int32_t* cls, const acc_t* keep, int64_t len, uint8_t* code) {
#pragma omp simd
  for (int64_t v = 0; v < len; ++v)
    code[v] = keep[v] == acc_t(0) ? uint8_t(0) : cls[v] < 0 ? uint8_t(1) : static_cast<uint8_t>(cls[v] + 2);
}

template <typename acc_t>
int64_t read_any_labels(const KernelArgs& P, int64_t offset, int64_t len, int32_t* cls, acc_t* keep, bool count_bad) {
  switch (P.label_type) {
    case LABEL_CODES: return read_codes<acc_t>(P, offset, len, cls, keep);
    case LABEL_U8: return read_labels<uint8_t, acc_t>(P, offset, len, cls, keep, count_bad);
    case LABEL_I8: return read_labels<int8_t, acc_t>(P, offset, len, cls, keep, count_bad);
    case LABEL_I16: return read_labels<int16_t, acc_t>(P, offset, len, cls, keep, count_bad);
    case LABEL_I32: return read_labels<int32_t, acc_t>(P, offset, len, cls, keep, count_bad);
    default: return read_labels<int64_t, acc_t>(P, offset, len, cls, keep, count_bad);
  }
}

// Channels are walked in groups of up to four per loop over the pixels: the per-pixel running
// max and sum are loaded and stored once per group instead of once per channel (those stores
// bounded the loops), and a group's size is a template argument so its loop unrolls and vectorises.
template <int N> struct ChannelGroup { static constexpr int size = N; };

template <typename F>
inline void for_channel_groups(int64_t C, F&& f) {
  int64_t c0 = 0;
  for (; c0 + 4 <= C; c0 += 4) f(ChannelGroup<4>{}, c0);
  switch (C - c0) {
    case 3: f(ChannelGroup<3>{}, c0); break;
    case 2: f(ChannelGroup<2>{}, c0); break;
    case 1: f(ChannelGroup<1>{}, c0); break;
    default: break;
  }
}

// mx = max(mx, x_c) over the group's channels (and x_y when the label is one of them); returns
// the finite probe's part.
template <int G, bool VALIDATE, bool LOGIT_OF_LABEL, typename acc_t>
inline acc_t group_max(const acc_t* src, int64_t stride, int64_t c0, const int32_t* cls, int64_t len, acc_t* mx,
                       acc_t* xy) {
  const acc_t* x[G];
  for (int g = 0; g < G; ++g) x[g] = src + (c0 + g) * stride;
  acc_t pr = 0;
#pragma omp simd reduction(+ : pr)
  for (int64_t v = 0; v < len; ++v) {
    acc_t m = mx[v], y = LOGIT_OF_LABEL ? xy[v] : acc_t(0);
    for (int g = 0; g < G; ++g) {
      const acc_t xv = x[g][v];
      if (VALIDATE) pr += xv - xv;
      m = xv > m ? xv : m;
      if (LOGIT_OF_LABEL) y = cls[v] == static_cast<int32_t>(c0 + g) ? xv : y;
    }
    mx[v] = m;
    if (LOGIT_OF_LABEL) xy[v] = y;
  }
  return pr;
}

// Softmax without the max pass takes exp(min(x, DIRECT_EXP_LIMIT)) (exp_approx's 2^n stays a normal
// float up to n = 127, x ~ 88; the clamp also turns NaN and +inf into the limit), and a block keeps
// it only when every pixel's sum lies in [DIRECT_SUM_LOW, DIRECT_SUM_HIGH] and no logit is -inf:
// then every logit is finite and below the limit, each pixel's largest logit is above -42 - ln C,
// and a channel that exp_approx flushes to 0 (x < -87.3) has p < 1e-19. p = u / s is then as
// accurate as with the max subtracted (docs/performance.md).
constexpr float DIRECT_EXP_LIMIT = 80.0f;
constexpr float DIRECT_SUM_LOW = 0x1.0p-60f, DIRECT_SUM_HIGH = 0x1.0p+100f;

// u_c = exp(x_c - mx) (SHIFTED) or exp(min(x_c, DIRECT_EXP_LIMIT)) for the group's channels, s += their
// sum; returns the smallest logit of the group when asked (LOWEST; the finite check of the unshifted
// pass), else 0. u_c may be x_c (half types, converted in place): each element is read before it is
// written, in the same iteration.
template <int G, bool SHIFTED, bool LOWEST, typename acc_t>
inline acc_t group_exp(const acc_t* src, int64_t stride, int64_t c0, const acc_t* mx, int64_t len, acc_t* u, int64_t B,
                       acc_t* s) {
  const acc_t* x[G];
  acc_t* out[G];
  for (int g = 0; g < G; ++g) x[g] = src + (c0 + g) * stride, out[g] = u + (c0 + g) * B;
  const acc_t limit = static_cast<acc_t>(DIRECT_EXP_LIMIT);
  acc_t lowest = 0;
#pragma omp simd reduction(min : lowest)
  for (int64_t v = 0; v < len; ++v) {
    acc_t sum = s[v];
    for (int g = 0; g < G; ++g) {
      const acc_t xv = x[g][v];
      if (LOWEST) lowest = xv < lowest ? xv : lowest;
      const acc_t e = exp_approx(SHIFTED ? xv - mx[v] : xv < limit ? xv : limit);
      out[g][v] = e;
      sum += e;
    }
    s[v] = sum;
  }
  return lowest;
}

// Whether every sum of the block lies where the unshifted softmax is exact enough (above).
template <typename acc_t>
inline bool sums_in_direct_range(const acc_t* s, int64_t len) {
  acc_t low = static_cast<acc_t>(DIRECT_SUM_HIGH), high = 0;
#pragma omp simd reduction(min : low) reduction(max : high)
  for (int64_t v = 0; v < len; ++v) {
    low = s[v] < low ? s[v] : low;
    high = s[v] > high ? s[v] : high;
  }
  return low >= static_cast<acc_t>(DIRECT_SUM_LOW) && high <= static_cast<acc_t>(DIRECT_SUM_HIGH);
}

// One block of pixels, activated: p_c = u_c * r with u = exp(x) (where group_exp's range test
// allows) or exp(x - max_c x) and r = 1 / sum_c u for softmax (the normalisation is folded into the
// passes that read u), u = p and r = 1 otherwise; the sum (and the max, when subtracted) is kept
// per pixel. With LOGIT_OF_LABEL (softmax, for the pixel term) the max is always subtracted, and
// it also keeps x_y and, with label smoothing, sum_c w_c x_c.
template <typename scalar_t, typename acc_t>
struct Tile {
  const KernelArgs& P;
  const int64_t B;
  Scratch<acc_t> memory;
  acc_t *u, *r, *keep, *mx, *s, *xy, *wx, *term;  // term: per-pixel values of the pixel term
  Scratch<int32_t> cls_memory;
  int32_t* cls;
  acc_t probe = 0;  // sum of x - x: NaN iff some logit is NaN/inf
  int64_t bad = 0;  // labels neither valid nor ignored

  explicit Tile(const KernelArgs& args)
      : P(args), B(args.block), memory((args.C + 8) * args.block), cls_memory(args.block) {
    u = memory.data;
    r = u + P.C * B, keep = r + B, mx = keep + B, s = mx + B, xy = s + B, wx = xy + B, term = wx + B;
    cls = cls_memory.data;
  }

  // Loads pixels [v0, v0 + len) of image n.
  template <bool VALIDATE, bool LOGIT_OF_LABEL>
  void load(int64_t n, int64_t v0, int64_t len) {
    const int64_t C = P.C, V = P.V;
    bad += read_any_labels<acc_t>(P, n * V + v0, len, cls, keep, VALIDATE && P.check_labels);
    if (P.codes_out != nullptr) write_codes(cls, keep, len, P.codes_out + n * V + v0);
    const scalar_t* x = static_cast<const scalar_t*>(P.logits) + n * C * V + v0;
    prefetch_block<false>(x + B, C, V, len);
    // The logits in the compute type: read in place, or converted into u first (half types).
    const acc_t* src;
    int64_t stride;
    const auto convert = [&] {
      if constexpr (sizeof(scalar_t) != sizeof(acc_t)) {
        for (int64_t c = 0; c < C; ++c) to_float(x + c * V, u + c * B, len);
      }
    };
    if constexpr (sizeof(scalar_t) == sizeof(acc_t)) {
      src = reinterpret_cast<const acc_t*>(x), stride = V;
    } else {
      convert();
      src = u, stride = B;
    }
    acc_t pr = 0;
    if (P.activation == SOFTMAX) {
      // Without the pixel term (which needs max + log(sum) exactly where the label's logit is near
      // the max) the block first tries the softmax without the max pass; mx is then not kept.
      bool direct = !LOGIT_OF_LABEL;
      if (direct) {
        for (int64_t v = 0; v < len; ++v) s[v] = 0;
        acc_t lowest = 0;
        for_channel_groups(C, [&](auto group, int64_t c0) {
          const acc_t low = group_exp<decltype(group)::size, false, VALIDATE>(src, stride, c0, mx, len, u, B, s);
          lowest = low < lowest ? low : lowest;
        });
        // Kept, every logit is finite: the probe's part is 0.
        direct = sums_in_direct_range(s, len) && lowest > -static_cast<acc_t>(HUGE_VALF);
        if (!direct) convert();  // half types: u overwrote the converted logits
      }
      if (!direct) {
        for (int64_t v = 0; v < len; ++v) mx[v] = src[v], s[v] = 0;
        if (LOGIT_OF_LABEL) {
          for (int64_t v = 0; v < len; ++v) xy[v] = 0;
        }
        for_channel_groups(C, [&](auto group, int64_t c0) {
          pr += group_max<decltype(group)::size, VALIDATE, LOGIT_OF_LABEL>(src, stride, c0, cls, len, mx, xy);
        });
        if (LOGIT_OF_LABEL && P.smoothing != 0) {  // before group_exp: half logits are overwritten by u
          for (int64_t v = 0; v < len; ++v) wx[v] = 0;
          for (int64_t c = 0; c < C; ++c) {
            const acc_t wc = static_cast<acc_t>(P.pixel_weight[c]);
            const acc_t* xc = src + c * stride;
#pragma omp simd
            for (int64_t v = 0; v < len; ++v) wx[v] += wc * xc[v];
          }
        }
        for_channel_groups(C, [&](auto group, int64_t c0) {
          group_exp<decltype(group)::size, true, false>(src, stride, c0, mx, len, u, B, s);
        });
      }
#pragma omp simd
      for (int64_t v = 0; v < len; ++v) r[v] = acc_t(1) / s[v];
    } else {
      const bool sigmoid = P.activation == SIGMOID;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* xc = src + c * stride;
        acc_t* uc = u + c * B;
        if (sigmoid) {
#pragma omp simd reduction(+ : pr)
          for (int64_t v = 0; v < len; ++v) {
            if (VALIDATE) pr += xc[v] - xc[v];
            const acc_t e = exp_approx(xc[v] < acc_t(0) ? xc[v] : -xc[v]);  // sigmoid(x) = 1 / (1 + e) or e / (1 + e)
            uc[v] = (xc[v] >= acc_t(0) ? acc_t(1) : e) / (acc_t(1) + e);
          }
        } else {
#pragma omp simd reduction(+ : pr)
          for (int64_t v = 0; v < len; ++v) {
            if (VALIDATE) pr += xc[v] - xc[v];
            uc[v] = xc[v];
          }
        }
      }
      for (int64_t v = 0; v < len; ++v) r[v] = acc_t(1);
    }
    probe += pr;
  }
};

// Lanes of the block sums: each sum is kept as SUM_LANES partial sums (one vector register on
// AVX-512, two on AVX2) and added lane by lane into double accumulators, so the horizontal
// reduction happens once per task, not once per block and channel (where it cost as much as
// the block's loop).
constexpr int64_t SUM_LANES = 16;

// Adds one block's sums to lanes = (tp[C], ps[C], gs[C], pt[C]) x SUM_LANES: tp_c = sum [cls = c] r u_c,
// ps_c = sum keep r^k u_c^k, gs_c = sum [cls = c] and, with the pixel term, pt_c = sum [cls = c]
// term: its per-pixel values summed by class, so that the class weights are applied to C sums
// on the host rather than looked up per pixel.
template <bool SQUARED, bool PIXEL, typename acc_t>
void block_sums(const acc_t* u, const acc_t* r, const acc_t* keep, const int32_t* cls, const acc_t* term, int64_t C,
                int64_t B, int64_t len, acc_t* weight, double* lanes) {
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) weight[v] = SQUARED ? keep[v] * r[v] * r[v] : keep[v] * r[v];
  const int64_t whole = len - len % SUM_LANES;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* uc = u + c * B;
    const int32_t cc = static_cast<int32_t>(c);
    acc_t tp[SUM_LANES] = {}, ps[SUM_LANES] = {}, gs[SUM_LANES] = {}, pt[SUM_LANES] = {};
    const auto add = [&](int64_t v, int64_t l) {  // pixel v into lane l
      const acc_t g = cls[v] == cc ? acc_t(1) : acc_t(0);
      tp[l] += g * r[v] * uc[v];
      ps[l] += SQUARED ? weight[v] * uc[v] * uc[v] : weight[v] * uc[v];
      gs[l] += g;
      if (PIXEL) pt[l] += g * term[v];
    };
    for (int64_t v0 = 0; v0 < whole; v0 += SUM_LANES) {
#pragma omp simd
      for (int64_t l = 0; l < SUM_LANES; ++l) add(v0 + l, l);
    }
    for (int64_t v = whole; v < len; ++v) add(v, v - whole);
    double* tp_lanes = lanes + c * SUM_LANES;
    double* ps_lanes = lanes + (C + c) * SUM_LANES;
    double* gs_lanes = lanes + (2 * C + c) * SUM_LANES;
    double* pt_lanes = lanes + (3 * C + c) * SUM_LANES;
#pragma omp simd
    for (int64_t l = 0; l < SUM_LANES; ++l) {
      tp_lanes[l] += tp[l];
      ps_lanes[l] += ps[l];
      gs_lanes[l] += gs[l];
      if (PIXEL) pt_lanes[l] += pt[l];
    }
  }
}

// The per-pixel term of a block (softmax): term = f nll with nll = lse - x_y, p_y = exp(-nll) and
// the focal factor f = (1 - p_y)^gamma (1 for cross-entropy); returns sum_c w_c (lse - x_c) over
// the counted pixels (class >= 0) for label smoothing.
template <bool FOCAL, bool SMOOTHING, typename scalar_t, typename acc_t>
acc_t pixel_terms_t(Tile<scalar_t, acc_t>& tile, int64_t len) {
  const KernelArgs& P = tile.P;
  const acc_t gamma = static_cast<acc_t>(P.gamma), weight_sum = static_cast<acc_t>(P.pixel_weight_sum);
  const acc_t *mx = tile.mx, *s = tile.s, *xy = tile.xy, *wx = tile.wx;
  const int32_t* cls = tile.cls;
  acc_t* term = tile.term;
  acc_t smooth = 0;
#pragma omp simd reduction(+ : smooth)
  for (int64_t v = 0; v < len; ++v) {
    const acc_t lse = mx[v] + log_approx(s[v]);
    const acc_t nll = lse - xy[v];
    acc_t factor = 1;
    if (FOCAL) {
      const acc_t rest = acc_t(1) - exp_approx(-nll);
      factor = rest > acc_t(0) ? exp_approx(gamma * log_approx(rest)) : acc_t(0);
    }
    // Selected, not masked later: on a pixel that is not counted x_y is 0, nll = lse may be far
    // below 0, exp_approx(-nll) leaves its domain, and 0 * inf would be NaN in the class sums.
    term[v] = cls[v] >= 0 ? factor * nll : acc_t(0);
    if (SMOOTHING) smooth += cls[v] >= 0 ? weight_sum * lse - wx[v] : acc_t(0);
  }
  return smooth;
}

// The loop-invariant choices as template arguments: branches inside the loop kept it scalar.
template <typename scalar_t, typename acc_t>
acc_t pixel_terms(Tile<scalar_t, acc_t>& tile, int64_t len) {
  if (tile.P.gamma != 0) return pixel_terms_t<true, false>(tile, len);
  if (tile.P.smoothing != 0) return pixel_terms_t<false, true>(tile, len);
  return pixel_terms_t<false, false>(tile, len);
}

// Per-image, per-task sums of tasks [begin, end): partial[t] holds the 4C sums of block_sums then
// the smoothing sum (statistics_width); probe[t] and bad[t] the finite probe and the invalid-label
// count.
template <typename scalar_t>
void statistics_tasks_t(const KernelArgs& P, int64_t begin, int64_t end, double* partial, double* probe,
                        int64_t* bad) {
  using acc_t = typename Compute<scalar_t>::type;
  const int64_t C = P.C, B = P.block, width = statistics_width(C);
  Tile<scalar_t, acc_t> tile(P);
  Scratch<acc_t> weights(B);
  Scratch<double> lanes(4 * C * SUM_LANES);
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / P.tasks_per_image;
    const int64_t v_begin = (t % P.tasks_per_image) * P.task_len;
    const int64_t v_end = min64(P.V, v_begin + P.task_len);
    double* acc = partial + t * width;
    for (int64_t i = 0; i < width; ++i) acc[i] = 0;
    for (int64_t i = 0; i < 4 * C * SUM_LANES; ++i) lanes.data[i] = 0;
    tile.probe = 0;
    tile.bad = 0;
    for (int64_t v0 = v_begin; v0 < v_end; v0 += B) {
      const int64_t len = min64(B, v_end - v0);
      if (P.pixel) {
        if (P.validate) tile.template load<true, true>(n, v0, len); else tile.template load<false, true>(n, v0, len);
        acc[4 * C] += pixel_terms(tile, len);
        (P.squared ? block_sums<true, true, acc_t> : block_sums<false, true, acc_t>)(
            tile.u, tile.r, tile.keep, tile.cls, tile.term, C, B, len, weights.data, lanes.data);
      } else {
        if (P.validate) tile.template load<true, false>(n, v0, len); else tile.template load<false, false>(n, v0, len);
        (P.squared ? block_sums<true, false, acc_t> : block_sums<false, false, acc_t>)(
            tile.u, tile.r, tile.keep, tile.cls, tile.term, C, B, len, weights.data, lanes.data);
      }
    }
    for (int64_t i = 0; i < 4 * C; ++i) {
      double sum = 0;
      for (int64_t l = 0; l < SUM_LANES; ++l) sum += lanes.data[i * SUM_LANES + l];
      acc[i] = sum;
    }
    probe[t] = tile.probe;
    bad[t] = tile.bad;
  }
}

// The gradient's per-pixel term (softmax): dL/dx_c = k [(1 - eps) (p_c - [y = c]) h w_y
// + eps/C (p_c W - w_c)] on counted pixels (class >= 0), w the class weights, W = sum_j w_j; h = 1
// for cross-entropy and, for focal, h = (1 - p_y)^(gamma - 1) (1 - p_y + gamma p_y nll). That is
// p_c A - [y = c] kw_c h - bias_c [counted] with kw_c = k (1 - eps) w_c, A = kw_y h + smooth
// [counted], smooth = k eps W / C, bias_c = k eps w_c / C. softmax_dot folds A into the dot product, so no per-pixel weight is
// looked up: the class weight of y enters only where [y = c] is already tested.
enum PixelGradient { NO_PIXEL = 0, CROSS_ENTROPY = 1, FOCAL = 2 };

// A group of G channels of dL/dlogits for a block (the per-pixel values are loaded once for the
// group): keep * dp/dlogit * (q - dot), q = ak p^(k-1) + [cls = c] bc (ak = k a_c), dp/dlogit = p
// (softmax), p (1 - p) (sigmoid) or 1 (identity), p = r u. With the pixel term (dot = keep dot - A
// from softmax_dot): p (keep q - dot) - [cls = c] kw h - bias [counted].
template <int ACTIVATION, bool SQUARED, int PIXEL, int G, typename acc_t>
void group_gradient(const acc_t* u, int64_t B, const acc_t* r, const acc_t* keep, const int32_t* cls, const acc_t* dot,
                    const acc_t* h, const acc_t* ak, const acc_t* bc, const acc_t* kw, const acc_t* bias, int64_t c0,
                    int64_t len, acc_t* const* out) {
  const acc_t* uc[G];
  acc_t* dst[G];
  acc_t akg[G], bcg[G], kwg[G], biasg[G];
  for (int g = 0; g < G; ++g) {
    uc[g] = u + (c0 + g) * B, dst[g] = out[g];
    akg[g] = ak[c0 + g], bcg[g] = bc[c0 + g], kwg[g] = kw[c0 + g], biasg[g] = bias[c0 + g];
  }
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const acc_t rv = r[v], kv = keep[v], dv = ACTIVATION == SOFTMAX ? dot[v] : acc_t(0);
    const int32_t y = cls[v];
    const acc_t hv = PIXEL == FOCAL ? h[v] : acc_t(1);
    for (int g = 0; g < G; ++g) {
      const acc_t p = rv * uc[g][v];
      const bool mine = y == static_cast<int32_t>(c0 + g);
      const acc_t q = (SQUARED ? akg[g] * p : akg[g]) + (mine ? bcg[g] : acc_t(0));
      acc_t d;
      if (ACTIVATION == SOFTMAX && PIXEL) {
        d = p * (kv * q - dv) - (mine ? kwg[g] * hv : acc_t(0)) - (y >= 0 ? biasg[g] : acc_t(0));
      } else if (ACTIVATION == SOFTMAX) {
        d = kv * p * (q - dv);
      } else if (ACTIVATION == SIGMOID) {
        d = kv * p * (acc_t(1) - p) * q;
      } else {
        d = kv * q;
      }
      dst[g][v] = d;
    }
  }
}

template <typename acc_t>
using GroupGradient = void (*)(const acc_t*, int64_t, const acc_t*, const acc_t*, const int32_t*, const acc_t*,
                               const acc_t*, const acc_t*, const acc_t*, const acc_t*, const acc_t*, int64_t, int64_t,
                               acc_t* const*);

// group_gradient for groups of 1 to 4 channels (index = group size).
template <typename acc_t>
struct GroupGradients {
  GroupGradient<acc_t> of_size[5];
};

template <int ACTIVATION, bool SQUARED, int PIXEL, typename acc_t>
GroupGradients<acc_t> group_gradients() {
  return {{nullptr, group_gradient<ACTIVATION, SQUARED, PIXEL, 1, acc_t>, group_gradient<ACTIVATION, SQUARED, PIXEL, 2, acc_t>,
           group_gradient<ACTIVATION, SQUARED, PIXEL, 3, acc_t>, group_gradient<ACTIVATION, SQUARED, PIXEL, 4, acc_t>}};
}

template <int ACTIVATION, int PIXEL, typename acc_t>
GroupGradients<acc_t> group_gradients_squared(bool squared) {
  return squared ? group_gradients<ACTIVATION, true, PIXEL, acc_t>() : group_gradients<ACTIVATION, false, PIXEL, acc_t>();
}

template <typename acc_t>
GroupGradients<acc_t> group_gradients_for(int activation, bool squared, int pixel) {
  if (activation == SOFTMAX) {
    if (pixel == FOCAL) return group_gradients_squared<SOFTMAX, FOCAL, acc_t>(squared);
    if (pixel == CROSS_ENTROPY) return group_gradients_squared<SOFTMAX, CROSS_ENTROPY, acc_t>(squared);
    return group_gradients_squared<SOFTMAX, NO_PIXEL, acc_t>(squared);
  }
  if (activation == SIGMOID) return group_gradients_squared<SIGMOID, NO_PIXEL, acc_t>(squared);
  return group_gradients_squared<IDENTITY, NO_PIXEL, acc_t>(squared);
}

// Softmax: dot = sum_c p_c q_c = r sum_c u_c q_c, q_c = ak_c (r u_c)^(k-1) + [cls = c] b_c; with the
// pixel term, keep dot - A = keep r sum_c (u_c q_c - [cls = c] kw_c h / r) - smooth [counted]
// (1 / r = s, the softmax sum; hs = h s for focal).
template <bool SQUARED, int PIXEL, typename acc_t>
void softmax_dot(const acc_t* u, const acc_t* r, const acc_t* keep, const acc_t* s, const acc_t* hs,
                 const int32_t* cls, const acc_t* ak, const acc_t* b, const acc_t* kw, acc_t smooth, int64_t C,
                 int64_t B, int64_t len, acc_t* dot) {
  for (int64_t v = 0; v < len; ++v) dot[v] = 0;
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* uc = u + c * B;
    const acc_t akc = ak[c], bc = b[c], kwc = PIXEL ? kw[c] : acc_t(0);
    const int32_t cc = static_cast<int32_t>(c);
#pragma omp simd
    for (int64_t v = 0; v < len; ++v) {
      const bool mine = cls[v] == cc;
      dot[v] += uc[v] * ((SQUARED ? akc * r[v] * uc[v] : akc) + (mine ? bc : acc_t(0)));
      if (PIXEL) dot[v] -= mine ? kwc * (PIXEL == FOCAL ? hs[v] : s[v]) : acc_t(0);
    }
  }
  if (PIXEL) {
#pragma omp simd
    for (int64_t v = 0; v < len; ++v) dot[v] = keep[v] * r[v] * dot[v] - (cls[v] >= 0 ? smooth : acc_t(0));
  } else {
#pragma omp simd
    for (int64_t v = 0; v < len; ++v) dot[v] *= r[v];
  }
}

template <typename acc_t>
using SoftmaxDot = void (*)(const acc_t*, const acc_t*, const acc_t*, const acc_t*, const acc_t*, const int32_t*,
                            const acc_t*, const acc_t*, const acc_t*, acc_t, int64_t, int64_t, int64_t, acc_t*);

template <int PIXEL, typename acc_t>
SoftmaxDot<acc_t> softmax_dot_for(bool squared) {
  return squared ? softmax_dot<true, PIXEL, acc_t> : softmax_dot<false, PIXEL, acc_t>;
}

// Focal: h (above) and hs = h s per pixel of a block.
template <typename scalar_t, typename acc_t>
void focal_factors(const Tile<scalar_t, acc_t>& tile, int64_t len, acc_t* h, acc_t* hs) {
  const acc_t gamma = static_cast<acc_t>(tile.P.gamma);
  const acc_t *mx = tile.mx, *s = tile.s, *xy = tile.xy;
#pragma omp simd
  for (int64_t v = 0; v < len; ++v) {
    const acc_t nll = mx[v] + log_approx(s[v]) - xy[v];
    const acc_t py = exp_approx(-nll);
    const acc_t rest = acc_t(1) - py;
    h[v] = rest > acc_t(0) ? exp_approx((gamma - acc_t(1)) * log_approx(rest)) * (rest + gamma * py * nll) : acc_t(0);
    hs[v] = h[v] * s[v];
  }
}

// dL/dlogits of tasks [begin, end) into grad; a, b (N x C, already scaled by the upstream
// gradient), pixel_scale = k above.
template <typename scalar_t>
void gradient_tasks_t(const KernelArgs& P, int64_t begin, int64_t end, const double* a, const double* b,
                      double pixel_scale, void* grad_data) {
  using acc_t = typename Compute<scalar_t>::type;
  const int64_t C = P.C, V = P.V, B = P.block;
  const bool softmax = P.activation == SOFTMAX, pixel = P.pixel && softmax, focal = pixel && P.gamma != 0;
  const int pixel_kind = focal ? FOCAL : pixel ? CROSS_ENTROPY : NO_PIXEL;
  const GroupGradients<acc_t> gradients = group_gradients_for<acc_t>(P.activation, P.squared, pixel_kind);
  const SoftmaxDot<acc_t> dot_product = focal   ? softmax_dot_for<FOCAL, acc_t>(P.squared)
                                        : pixel ? softmax_dot_for<CROSS_ENTROPY, acc_t>(P.squared)
                                                : softmax_dot_for<NO_PIXEL, acc_t>(P.squared);
  scalar_t* grad = static_cast<scalar_t*>(grad_data);
  Tile<scalar_t, acc_t> tile(P);
  Scratch<acc_t> work(7 * B + 4 * C);
  acc_t *dot = work.data, *h = dot + B, *hs = h + B, *rows = hs + B;  // rows: 4 x B (half types)
  acc_t *ak = rows + 4 * B, *bc = ak + C, *kw = bc + C, *bias = kw + C;
  const acc_t smooth = static_cast<acc_t>(pixel ? pixel_scale * P.smoothing * P.pixel_weight_sum / C : 0.0);
  for (int64_t c = 0; c < C; ++c) {
    kw[c] = pixel ? static_cast<acc_t>(pixel_scale * P.pixel_weight[c] * (1 - P.smoothing)) : acc_t(0);
    bias[c] = pixel ? static_cast<acc_t>(pixel_scale * P.smoothing * P.pixel_weight[c] / C) : acc_t(0);
  }
  for (int64_t t = begin; t < end; ++t) {
    const int64_t n = t / P.tasks_per_image;
    const int64_t v_begin = (t % P.tasks_per_image) * P.task_len;
    const int64_t v_end = min64(V, v_begin + P.task_len);
    for (int64_t c = 0; c < C; ++c) {  // dL/dp_c = q_c = a_c k p_c^(k-1) + b_c g_c
      ak[c] = static_cast<acc_t>(a[n * C + c] * (P.squared ? 2 : 1));
      bc[c] = static_cast<acc_t>(b[n * C + c]);
    }
    for (int64_t v0 = v_begin; v0 < v_end; v0 += B) {
      const int64_t len = min64(B, v_end - v0);
      if (focal) {  // only focal needs x_y here
        tile.template load<false, true>(n, v0, len);
        focal_factors(tile, len, h, hs);
      } else {
        tile.template load<false, false>(n, v0, len);
      }
      prefetch_block<true>(grad + n * C * V + v0 + B, C, V, len);
      if (softmax) dot_product(tile.u, tile.r, tile.keep, tile.s, hs, tile.cls, ak, bc, kw, smooth, C, B, len, dot);
      for_channel_groups(C, [&](auto group, int64_t c0) {
        constexpr int G = decltype(group)::size;
        scalar_t* out[G];
        acc_t* dst[G];
        for (int g = 0; g < G; ++g) {
          out[g] = grad + (n * C + c0 + g) * V + v0;
          if constexpr (sizeof(scalar_t) == sizeof(acc_t)) dst[g] = reinterpret_cast<acc_t*>(out[g]); else dst[g] = rows + g * B;
        }
        gradients.of_size[G](tile.u, B, tile.r, tile.keep, tile.cls, dot, h, ak, bc, kw, bias, c0, len, dst);
        if constexpr (sizeof(scalar_t) != sizeof(acc_t)) {
          for (int g = 0; g < G; ++g) from_float(rows + g * B, out[g], len);
        }
      });
    }
  }
}

}  // namespace

void statistics_tasks(const KernelArgs& P, int64_t begin, int64_t end, double* partial, double* probe, int64_t* bad) {
  switch (P.logits_type) {
    case LOGITS_F64: return statistics_tasks_t<double>(P, begin, end, partial, probe, bad);
    case LOGITS_BF16: return statistics_tasks_t<BF16>(P, begin, end, partial, probe, bad);
    case LOGITS_F16: return statistics_tasks_t<F16>(P, begin, end, partial, probe, bad);
    default: return statistics_tasks_t<float>(P, begin, end, partial, probe, bad);
  }
}

void gradient_tasks(const KernelArgs& P, int64_t begin, int64_t end, const double* a, const double* b,
                    double pixel_scale, void* grad) {
  switch (P.logits_type) {
    case LOGITS_F64: return gradient_tasks_t<double>(P, begin, end, a, b, pixel_scale, grad);
    case LOGITS_BF16: return gradient_tasks_t<BF16>(P, begin, end, a, b, pixel_scale, grad);
    case LOGITS_F16: return gradient_tasks_t<F16>(P, begin, end, a, b, pixel_scale, grad);
    default: return gradient_tasks_t<float>(P, begin, end, a, b, pixel_scale, grad);
  }
}

}  // namespace FUSED_ISA
