// torch.ops.dice_fused: the fused soft-Dice operators on the CPU (schemas, CPU kernels, the
// scoring of the sums and its gradient, input validation inside the kernel's own pass).
//
// The hot loops live in fused_kernels.h, compiled for the build's baseline and for AVX2 and
// AVX-512 (fused_kernels_*.cpp); the widest the CPU supports is chosen once at load time
// (`DICE_FUSED_ISA=baseline|avx2|avx512` forces one, for measurements). Python adds the fake
// (shape-only) kernels and the autograd formulas (dice_impls/fused/ops.py).
//
// Operators:
//   statistics(logits, labels, ...) -> (stats (3, N, C) float64, probe)  intersection, pred_sum, target_sum
//   gradient(logits, labels, a, b, ...) -> dL/dlogits                    a = dL/dpred_sum, b = dL/dintersection
//   loss(logits, labels, ...) -> (loss, saved, codes)  Dice (+ cross-entropy/focal) loss in one pass, with
//                                                  the coefficients of its gradient for unit upstream
//                                                  gradient and the labels as one-byte codes
//   loss_backward(grad, logits, labels, saved, codes, ...) -> dL/dlogits
//   eager_loss(logits, labels, ...) -> loss         `loss` with its backward in C++ (autograd::Function),
//                                                  what eager mode calls; compiled code calls `loss`
// Registered without pybind or torch/extension.h: the extension is a plain shared library that
// torch.ops.load_library loads.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/fill.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "fused_args.h"

FUSED_DECLARE_KERNELS(isa_baseline)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
FUSED_DECLARE_KERNELS(isa_avx2)
FUSED_DECLARE_KERNELS(isa_avx512)
#endif

namespace {

constexpr int64_t TASK_PIXELS = 16384;  // enough work per task, and many tasks
constexpr int64_t MAX_BLOCK = 256;      // pixels per block (a power of two, divides TASK_PIXELS)
constexpr int64_t TILE_FLOATS = 4096;   // the C x block tile: 16 KiB, within L1 for any C

struct Kernels {
  const char* name;
  decltype(&isa_baseline::statistics_tasks) statistics;
  decltype(&isa_baseline::gradient_tasks) gradient;
};

Kernels pick_kernels() {
  const Kernels baseline{"baseline", isa_baseline::statistics_tasks, isa_baseline::gradient_tasks};
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  const Kernels avx2{"avx2", isa_avx2::statistics_tasks, isa_avx2::gradient_tasks};
  const Kernels avx512{"avx512", isa_avx512::statistics_tasks, isa_avx512::gradient_tasks};
  __builtin_cpu_init();
  const bool has_avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                        __builtin_cpu_supports("f16c");
  const bool has_avx512 = has_avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  const char* forced = std::getenv("DICE_FUSED_ISA");
  const std::string want = forced ? forced : "";
  if (want == "baseline") return baseline;
  if (want == "avx2" && has_avx2) return avx2;
  if ((want.empty() || want == "avx512") && has_avx512) return avx512;
  if (has_avx2) return avx2;
#endif
  return baseline;
}

const Kernels& kernels() {
  static const Kernels chosen = pick_kernels();
  return chosen;
}

int logits_type(const at::Tensor& logits) {
  switch (logits.scalar_type()) {
    case at::kFloat: return LOGITS_F32;
    case at::kDouble: return LOGITS_F64;
    case at::kBFloat16: return LOGITS_BF16;
    case at::kHalf: return LOGITS_F16;
    default: TORCH_CHECK_TYPE(false, "fused CPU kernel: unsupported logits dtype ", logits.scalar_type());
  }
}

int label_type(const at::Tensor& labels) {
  switch (labels.scalar_type()) {
    case at::kByte: case at::kBool: return LABEL_U8;
    case at::kChar: return LABEL_I8;
    case at::kShort: return LABEL_I16;
    case at::kInt: return LABEL_I32;
    case at::kLong: return LABEL_I64;
    default: TORCH_CHECK_TYPE(false, "fused CPU kernel: unsupported label dtype ", labels.scalar_type());
  }
}

void check_inputs(const at::Tensor& logits, const at::Tensor& labels) {
  TORCH_CHECK(logits.device().is_cpu() && labels.device().is_cpu(), "fused CPU kernel: tensors must be on the CPU");
  TORCH_CHECK(logits.is_contiguous() && labels.is_contiguous(), "fused CPU kernel needs contiguous inputs");
  TORCH_CHECK(logits.dim() >= 2 && labels.numel() * logits.size(1) == logits.numel() &&
                  labels.numel() == (logits.size(1) ? logits.numel() / logits.size(1) : labels.numel()),
              "fused CPU kernel: labels must have one entry per pixel of the logits");
}

KernelArgs make_args(const at::Tensor& logits, const at::Tensor& labels, int64_t activation, bool squared,
                     std::optional<int64_t> ignore_index, bool validate, bool check_labels) {
  check_inputs(logits, labels);
  TORCH_CHECK(activation >= 0 && activation <= 2, "fused CPU kernel: activation must be 0, 1 or 2");
  KernelArgs P{};
  P.logits = logits.data_ptr();
  P.labels = labels.data_ptr();
  P.logits_type = logits_type(logits);
  P.label_type = label_type(labels);
  P.N = logits.size(0);
  P.C = logits.size(1);
  P.V = P.N * P.C != 0 ? logits.numel() / (P.N * P.C) : 0;
  P.activation = static_cast<int>(activation);
  P.squared = squared;
  P.has_ignore = ignore_index.has_value();
  P.ignore_index = ignore_index.value_or(0);
  P.label_low = P.C == 1 ? 1 : 0;
  P.label_high = P.C == 1 ? 2 : P.C;
  P.valid_high = P.C == 1 ? 2 : P.C;
  P.validate = validate;
  P.check_labels = check_labels;
  P.block = MAX_BLOCK;
  while (P.block > 16 && P.block * P.C > TILE_FLOATS) P.block /= 2;
  P.task_len = TASK_PIXELS;
  P.tasks_per_image = std::max<int64_t>(1, (P.V + P.task_len - 1) / P.task_len);
  return P;
}

// "(1, 2, 3, 4)", as Python prints a tuple of ints.
std::string index_text(int64_t flat, at::IntArrayRef sizes) {
  std::vector<int64_t> index(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    index[d] = sizes[d] ? flat % sizes[d] : 0;
    flat = sizes[d] ? flat / sizes[d] : 0;
  }
  std::ostringstream text;
  text << "(";
  for (size_t d = 0; d < index.size(); ++d) text << (d ? ", " : "") << index[d];
  text << (index.size() == 1 ? ",)" : ")");
  return text.str();
}

// The errors of dice_impls.checks, raised from here when the kernel's own pass found a problem
// (a second pass over the data only then).
[[noreturn]] void raise_non_finite(const at::Tensor& logits) {
  const at::Tensor x = logits.to(at::kDouble);
  const double* data = x.data_ptr<double>();
  int64_t count = 0, first = -1;
  for (int64_t i = 0; i < x.numel(); ++i) {
    if (!std::isfinite(data[i])) {
      if (first < 0) first = i;
      ++count;
    }
  }
  TORCH_CHECK_VALUE(false, "logits contain NaN or inf (", count, " values; first at index ",
                    index_text(first, logits.sizes()), ")");
}

[[noreturn]] void raise_bad_labels(const KernelArgs& P, const at::Tensor& labels) {
  const at::Tensor y = labels.to(at::kLong);
  const int64_t* data = y.data_ptr<int64_t>();
  std::set<int64_t> values;
  for (int64_t i = 0; i < y.numel(); ++i) {
    const int64_t label = data[i];
    if ((label < 0 || label >= P.valid_high) && !(P.has_ignore && label == P.ignore_index)) values.insert(label);
  }
  std::ostringstream found;
  found << "[";
  int64_t shown = 0;
  for (const int64_t value : values) {
    if (shown == 5) break;
    found << (shown++ ? ", " : "") << value;
  }
  found << "]";
  std::ostringstream hint;
  if (P.has_ignore) hint << " other than ignore_index=" << P.ignore_index;
  TORCH_CHECK_VALUE(false, "labels out of range: found ", found.str(), " but labels must lie in [0, ", P.valid_high - 1,
                    "]", hint.str(), " for ", P.C, " channel(s)");
}

// The statistics pass: (3, N, C) Dice sums and the 3 pixel sums (sum w_y (1 - eps) f nll, the
// label-smoothing sum, sum d_y), reduced in task order; the kernels sum the pixel term by class,
// and the class weights are applied here.
struct Sums {
  std::vector<double> dice;  // (3, N, C)
  double pixel[3] = {0, 0, 0};
  double probe = 0;
};

Sums run_statistics(const KernelArgs& P, const at::Tensor& logits, const at::Tensor& labels) {
  const int64_t C = P.C, width = statistics_width(C), tasks = P.N * P.tasks_per_image;
  std::vector<double> partial(tasks * width, 0.0), probes(tasks, 0.0);
  std::vector<int64_t> bad(tasks, 0);
  const Kernels& k = kernels();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    k.statistics(P, begin, end, partial.data(), probes.data(), bad.data());
  });
  Sums sums;
  sums.dice.assign(3 * P.N * C, 0.0);
  int64_t bad_labels = 0;
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t n = t / P.tasks_per_image;
    const double* acc = partial.data() + t * width;
    for (int64_t s = 0; s < 3; ++s)
      for (int64_t c = 0; c < C; ++c) sums.dice[(s * P.N + n) * C + c] += acc[s * C + c];
    for (int64_t c = 0; c < C && P.pixel; ++c) {
      if (acc[2 * C + c] == 0) continue;  // no pixel of class c: its weight (NaN too) leaves the sums
      sums.pixel[0] += P.pixel_weight[c] * (1 - P.smoothing) * acc[3 * C + c];
      sums.pixel[2] += P.norm_weight[c] * acc[2 * C + c];
    }
    sums.pixel[1] += acc[4 * C];
    sums.probe += probes[t];
    bad_labels += bad[t];
  }
  if (P.validate && !std::isfinite(sums.probe)) raise_non_finite(logits);
  if (P.validate && P.check_labels && bad_labels) raise_bad_labels(P, labels);
  return sums;
}

// Gradient memory. A fresh buffer is faulted in page by page as the kernel first writes it
// (~100 ms per 64 MiB on a 2-core VM), and glibc serves allocations above its mmap threshold (at
// most 32 MiB), and often those above 128 KiB after the heap was trimmed, with fresh pages (a
// 1 MiB gradient: ~50 us of faults, a sixth of a 4x4x128x128 call). So gradients come from a
// small pool instead: a freed gradient (its tensor's deleter) is kept and handed to the next call
// of the same size, as a training loop's next step asks for exactly that. At most POOL_BUFFERS
// buffers of at least POOL_MIN_BYTES are kept; DICE_FUSED_POOL=0 turns it off (each gradient is
// then fresh memory). Fresh buffers of at least HUGE_PAGE are 2 MiB aligned and advised to use
// transparent huge pages (512x fewer faults where the kernel grants them).
constexpr size_t POOL_MIN_BYTES = size_t(256) << 10;
constexpr size_t POOL_BUFFERS = 2;
constexpr size_t HUGE_PAGE = size_t(2) << 20;

struct Pool {
  std::mutex lock;
  std::vector<std::pair<size_t, void*>> free;  // (bytes, buffer), newest last
};

Pool& pool() {
  static Pool* instance = new Pool();  // never destroyed: deleters may run during interpreter exit
  return *instance;
}

bool pool_enabled() {
  const char* flag = std::getenv("DICE_FUSED_POOL");
  return !(flag && flag[0] == '0');
}

void release_to_pool(void* data, size_t bytes) {
  Pool& p = pool();
  std::lock_guard<std::mutex> guard(p.lock);
  if (p.free.size() == POOL_BUFFERS) {
    std::free(p.free.front().second);
    p.free.erase(p.free.begin());
  }
  p.free.emplace_back(bytes, data);
}

void* acquire_fresh(size_t bytes) {
  void* data = nullptr;
  const bool huge = bytes >= HUGE_PAGE;
  const size_t alignment = huge ? HUGE_PAGE : 64, rounded = (bytes + alignment - 1) / alignment * alignment;
  TORCH_CHECK(posix_memalign(&data, alignment, rounded) == 0, "fused CPU kernel: out of memory for the gradient (",
              bytes, " bytes)");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (huge) madvise(data, rounded, MADV_HUGEPAGE);  // a hint: errors ignored
#endif
  return data;
}

void* acquire(size_t bytes) {
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> guard(p.lock);
    for (auto it = p.free.rbegin(); it != p.free.rend(); ++it) {
      if (it->first == bytes) {
        void* data = it->second;
        p.free.erase(std::next(it).base());
        return data;
      }
    }
  }
  return acquire_fresh(bytes);
}

at::Tensor gradient_buffer(const at::Tensor& logits) {
  const size_t bytes = static_cast<size_t>(logits.numel()) * logits.element_size();
  if (bytes < POOL_MIN_BYTES) return at::empty(logits.sizes(), logits.options());  // glibc's heap reuses these
  if (!pool_enabled()) return at::from_blob(acquire_fresh(bytes), logits.sizes(), [](void* ptr) { std::free(ptr); },
                                            logits.options());
  return at::from_blob(acquire(bytes), logits.sizes(), [bytes](void* ptr) { release_to_pool(ptr, bytes); },
                       logits.options());
}

// Buffers the pool holds now (tests, measurements).
int64_t pooled_buffers() {
  Pool& p = pool();
  std::lock_guard<std::mutex> guard(p.lock);
  return static_cast<int64_t>(p.free.size());
}

// DICE_FUSED_POISON=1 fills the gradient with NaN before the kernel writes it (tests: every
// element must be overwritten).
bool poison_outputs() {
  const char* flag = std::getenv("DICE_FUSED_POISON");
  return flag && flag[0] == '1';
}

at::Tensor run_gradient(const KernelArgs& P, const at::Tensor& logits, const double* a, const double* b,
                        double pixel_scale) {
  at::Tensor grad = gradient_buffer(logits);
  if (poison_outputs()) grad.fill_(std::numeric_limits<double>::quiet_NaN());
  const Kernels& k = kernels();
  void* out = grad.data_ptr();
  at::parallel_for(0, P.N * P.tasks_per_image, 1, [&](int64_t begin, int64_t end) {
    k.gradient(P, begin, end, a, b, pixel_scale, out);
  });
  return grad;
}

// --- the scoring of the sums (dice_impls/score.py: loss_from_statistics), with its gradient ---

// The folded loss's configuration by name: the entries of its `flags` and `scalars`, in the order
// dice_impls/fused/interface.py (FoldedLossArgs) writes them; `folded_loss_layout()` returns these
// names and Python compares them with its fields when it loads the extension.
#define FOLDED_FLAGS(X) \
  X(batch) X(include_background) X(micro) X(generalized) X(log_loss) X(negate) X(absent_classes) X(reduction)
#define FOLDED_SCALARS(X)                                                                                  \
  X(numerator_tp) X(denominator_tp) X(denominator_pred) X(denominator_target) X(smooth_nr) X(smooth_dr) \
  X(min_denominator) X(focal_gamma) X(lambda_dice) X(lambda_pixel) X(pixel_gamma) X(label_smoothing)
#define FOLDED_ENTRY(name) name,
#define FOLDED_NAME(name) #name,
enum class Flag : int { FOLDED_FLAGS(FOLDED_ENTRY) count };
enum class Scalar : int { FOLDED_SCALARS(FOLDED_ENTRY) count };
enum Generalized { NOT_GENERALIZED = 0, GENERALIZED_SQUARE = 1, GENERALIZED_SIMPLE = 2, GENERALIZED_UNIFORM = 3 };
enum Absent { ABSENT_INCLUDE = 0, ABSENT_ZERO = 1, ABSENT_EXCLUDE = 2 };
enum Reduction { REDUCTION_NONE = 0, REDUCTION_MEAN = 1, REDUCTION_SUM = 2 };

std::vector<std::string> folded_loss_layout() {
  std::vector<std::string> names{FOLDED_FLAGS(FOLDED_NAME) "|", FOLDED_SCALARS(FOLDED_NAME)};
  return names;
}

// The score of every member of the family is (nt tp + smooth_nr) / (dt tp + dp P + dg G + smooth_dr)
// (score.score_coefficients: F-beta, Tversky, Jaccard), clamped at min_denominator when that is > 0.
struct Scoring {
  bool batch, background, micro, log_loss, negate;
  int generalized, absent, reduction;
  double nt, dt, dp, dg, smooth_nr, smooth_dr, min_denominator, focal_gamma;
  std::vector<double> weight;  // C
  int64_t units(int64_t N) const { return batch ? 1 : N; }
  int64_t first() const { return background ? 0 : 1; }
  bool pooled() const { return micro || generalized != NOT_GENERALIZED; }
  int64_t entries(int64_t C) const { return pooled() ? 1 : C - first(); }  // loss entries per unit
};

Scoring make_scoring(at::IntArrayRef flags, at::ArrayRef<double> scalars, std::optional<at::ArrayRef<double>> weight,
                     int64_t C) {
  TORCH_CHECK(flags.size() == static_cast<size_t>(Flag::count) && scalars.size() == static_cast<size_t>(Scalar::count),
              "fused loss: flags needs ", static_cast<int>(Flag::count), " entries, scalars ",
              static_cast<int>(Scalar::count), " (FoldedLossArgs.to_op_args)");
  const auto flag = [&](Flag f) { return flags[static_cast<int>(f)]; };
  const auto scalar = [&](Scalar s) { return scalars[static_cast<int>(s)]; };
  Scoring S;
  S.batch = flag(Flag::batch), S.background = flag(Flag::include_background), S.micro = flag(Flag::micro);
  S.generalized = static_cast<int>(flag(Flag::generalized)), S.log_loss = flag(Flag::log_loss);
  S.negate = flag(Flag::negate), S.absent = static_cast<int>(flag(Flag::absent_classes));
  S.reduction = static_cast<int>(flag(Flag::reduction));
  S.nt = scalar(Scalar::numerator_tp), S.dt = scalar(Scalar::denominator_tp), S.dp = scalar(Scalar::denominator_pred);
  S.dg = scalar(Scalar::denominator_target), S.smooth_nr = scalar(Scalar::smooth_nr);
  S.smooth_dr = scalar(Scalar::smooth_dr), S.min_denominator = scalar(Scalar::min_denominator);
  S.focal_gamma = scalar(Scalar::focal_gamma);
  TORCH_CHECK(S.reduction >= REDUCTION_NONE && S.reduction <= REDUCTION_SUM && S.absent >= ABSENT_INCLUDE &&
                  S.absent <= ABSENT_EXCLUDE && S.generalized >= NOT_GENERALIZED && S.generalized <= GENERALIZED_UNIFORM,
              "fused loss: a flag is out of its range");
  S.weight.assign(C, 1.0);
  if (weight.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(weight->size()) == C, "fused loss: weight needs one entry per channel");
    S.weight.assign(weight->begin(), weight->end());
  }
  return S;
}

// Sudre et al.'s weights of one unit's classes [first, C) from their G (score.generalized_weights): a
// weight that is not finite becomes the largest finite one of the unit (0 if none).
std::vector<double> generalized_weights(const Scoring& S, const double* g, int64_t C) {
  std::vector<double> w(C, 0.0);
  double largest = 0;
  bool any_finite = false;
  for (int64_t c = S.first(); c < C; ++c) {
    const double raw = S.generalized == GENERALIZED_UNIFORM ? 1.0
                       : S.generalized == GENERALIZED_SQUARE ? 1.0 / (g[c] * g[c]) : 1.0 / g[c];
    if (std::isfinite(raw)) {
      w[c] = raw;
      largest = any_finite ? std::max(largest, raw) : raw;
      any_finite = true;
    } else {
      w[c] = std::numeric_limits<double>::infinity();
    }
  }
  for (int64_t c = S.first(); c < C; ++c)
    if (!std::isfinite(w[c])) w[c] = any_finite ? largest : 0.0;
  return w;
}

// The loss entry of one score: l(s) and dl/ds.
void loss_form(const Scoring& S, double s, double* l, double* dl_ds) {
  const double tiny = std::numeric_limits<float>::min();
  if (S.log_loss) {
    *l = -std::log(std::max(s, tiny));
    *dl_ds = s >= tiny ? -1.0 / s : 0.0;
  } else if (S.negate) {
    *l = -s, *dl_ds = -1.0;
  } else if (S.focal_gamma != 1) {  // (1 - s)**gamma, base clamped at 0 (score.focal_power)
    const double base = 1 - s;
    *l = base > 0 ? std::pow(base, S.focal_gamma) : 0.0;
    *dl_ds = base > 0 ? -S.focal_gamma * std::pow(base, S.focal_gamma - 1) : 0.0;
  } else {
    *l = 1 - s, *dl_ds = -1.0;
  }
}

// The loss of (3, N, C) sums: a scalar (mean, sum) in out[0], or the (units, entries) weighted losses
// (none) in out. Writes into a and b (N x C) dL/dpred_sum and dL/dintersection for a unit upstream
// gradient (none: of the entry that class feeds, which loss_backward scales by that entry's gradient).
void score(const Scoring& S, const double* stats, int64_t N, int64_t C, double* out, double* a, double* b) {
  const int64_t units = S.units(N), first = S.first(), K = S.entries(C);  // batch: one pooled unit, even of no images
  std::vector<double> tp(units * C, 0.0), ps(units * C, 0.0), gs(units * C, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t u = S.batch ? 0 : n;
      tp[u * C + c] += stats[n * C + c];
      ps[u * C + c] += stats[(N + n) * C + c];
      gs[u * C + c] += stats[(2 * N + n) * C + c];
    }
  std::vector<double> da(units * C, 0.0), db(units * C, 0.0);  // per unit, per class
  double total = 0;
  std::vector<double> num(K), den(K), weight(K), loss(K), dl_dnum(K), dl_dden(K), pool(C, 1.0);
  for (int64_t u = 0; u < units; ++u) {
    const double *t = &tp[u * C], *p = &ps[u * C], *g = &gs[u * C];
    if (S.generalized != NOT_GENERALIZED) pool = generalized_weights(S, g, C);
    else if (S.micro) pool = S.weight;
    std::fill(num.begin(), num.end(), 0.0);
    std::fill(den.begin(), den.end(), 0.0);
    for (int64_t c = first; c < C; ++c) {  // numerators and denominators are linear: pooling sums them
      const int64_t k = S.pooled() ? 0 : c - first;
      const double w = S.pooled() ? pool[c] : 1.0;
      num[k] += w * S.nt * t[c];
      den[k] += w * (S.dt * t[c] + S.dp * p[c] + S.dg * g[c]);
    }
    for (int64_t k = 0; k < K; ++k) {
      const double numerator = num[k] + S.smooth_nr, raw = den[k] + S.smooth_dr;
      // min_denominator 0 clamps nothing: a negative denominator is divided by (score.py).
      const bool clamped = S.min_denominator > 0 && raw < S.min_denominator;
      const double denominator = clamped ? S.min_denominator : raw;
      const bool empty = denominator == 0;
      const double value = empty ? 1.0 : numerator / denominator;
      double l, dl_ds;
      loss_form(S, value, &l, &dl_ds);
      double w = S.pooled() ? 1.0 : S.weight[first + k];
      const bool absent = !S.pooled() && !(g[first + k] > 0);
      if (S.absent == ABSENT_ZERO && absent) l = 0, dl_ds = 0;
      if (S.absent == ABSENT_EXCLUDE && absent) w = 0;
      loss[k] = l, weight[k] = w;
      dl_dnum[k] = empty ? 0.0 : dl_ds / denominator;
      dl_dden[k] = empty || clamped ? 0.0 : -dl_ds * value / denominator;
    }
    // d(reduced loss)/d(entry loss k), and the reduced value.
    double normalizer = 0, weighted = 0;
    for (int64_t k = 0; k < K; ++k) normalizer += weight[k], weighted += loss[k] * weight[k];
    std::vector<double> factor(weight);
    if (S.reduction == REDUCTION_MEAN) {
      const bool no_class = normalizer == 0;  // only with absent_classes="exclude": the unit scores 1
      total += no_class ? 1.0 : weighted / normalizer;
      for (double& f : factor) f = no_class ? 0.0 : f / (normalizer * units);
    } else if (S.reduction == REDUCTION_SUM) {
      total += weighted;
    } else {
      for (int64_t k = 0; k < K; ++k) out[u * K + k] = loss[k] * weight[k];
    }
    for (int64_t c = first; c < C; ++c) {
      const int64_t k = S.pooled() ? 0 : c - first;
      const double w = S.pooled() ? pool[c] : 1.0, scale = factor[k] * w;
      db[u * C + c] = scale * (dl_dnum[k] * S.nt + dl_dden[k] * S.dt);
      da[u * C + c] = scale * dl_dden[k] * S.dp;
    }
  }
  if (S.reduction == REDUCTION_MEAN) out[0] = units ? total / units : std::numeric_limits<double>::quiet_NaN();
  if (S.reduction == REDUCTION_SUM) out[0] = total;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t u = S.batch ? 0 : n;
      a[n * C + c] = da[u * C + c];
      b[n * C + c] = db[u * C + c];
    }
}

// The per-pixel term's configuration: the scalars lambda_dice, lambda_pixel, pixel_gamma,
// label_smoothing; the per-class weights of its numerator and normaliser (None: ones).
struct PixelTerm {
  double lambda_dice = 1, lambda_pixel = 0, gamma = 0, smoothing = 0, weight_sum = 0;
  std::vector<double> weight, norm;
};

PixelTerm make_pixel_term(KernelArgs& P, at::ArrayRef<double> scalars, std::optional<at::ArrayRef<double>> pixel_weight,
                          std::optional<at::ArrayRef<double>> norm_weight) {
  PixelTerm T;
  const auto scalar = [&](Scalar s) { return scalars[static_cast<int>(s)]; };
  T.lambda_dice = scalar(Scalar::lambda_dice), T.lambda_pixel = scalar(Scalar::lambda_pixel);
  T.gamma = scalar(Scalar::pixel_gamma), T.smoothing = scalar(Scalar::label_smoothing);
  T.weight.assign(P.C, 1.0);
  T.norm.assign(P.C, 1.0);
  if (pixel_weight.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(pixel_weight->size()) == P.C, "fused loss: pixel_weight needs one entry per channel");
    T.weight.assign(pixel_weight->begin(), pixel_weight->end());
  }
  if (norm_weight.has_value()) {
    TORCH_CHECK(static_cast<int64_t>(norm_weight->size()) == P.C, "fused loss: norm_weight needs one entry per channel");
    T.norm.assign(norm_weight->begin(), norm_weight->end());
  }
  for (const double w : T.weight) T.weight_sum += w;
  P.pixel = T.lambda_pixel != 0;
  TORCH_CHECK(!P.pixel || (P.activation == 0 && P.C >= 2), "fused loss: the per-pixel term needs softmax logits");
  TORCH_CHECK(T.smoothing == 0 || T.gamma == 0, "fused loss: label smoothing applies to cross-entropy only");
  P.gamma = T.gamma, P.smoothing = T.smoothing, P.pixel_weight_sum = T.weight_sum;
  P.pixel_weight = T.weight.data(), P.norm_weight = T.norm.data();
  return T;
}

at::ScalarType loss_dtype(const at::Tensor& logits) {
  return logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> statistics(const at::Tensor& logits, const at::Tensor& labels, int64_t activation,
                                              bool squared, std::optional<int64_t> ignore_index, bool check_finite,
                                              bool check_labels) {
  const KernelArgs P = make_args(logits, labels, activation, squared, ignore_index, check_finite || check_labels,
                                 check_labels);
  const Sums sums = run_statistics(P, logits, labels);
  auto out = at::empty({3, P.N, P.C}, logits.options().dtype(at::kDouble));
  std::copy(sums.dice.begin(), sums.dice.end(), out.data_ptr<double>());
  auto probe = at::empty({}, logits.options().dtype(at::kDouble));
  *probe.data_ptr<double>() = sums.probe;
  return std::make_tuple(out, probe);
}

at::Tensor gradient(const at::Tensor& logits, const at::Tensor& labels, const at::Tensor& a, const at::Tensor& b,
                    int64_t activation, bool squared, std::optional<int64_t> ignore_index) {
  const KernelArgs P = make_args(logits, labels, activation, squared, ignore_index, false, false);
  TORCH_CHECK(a.scalar_type() == at::kDouble && b.scalar_type() == at::kDouble && a.numel() == P.N * P.C &&
                  b.numel() == P.N * P.C,
              "fused CPU kernel: a and b must be float64 (N, C)");
  const at::Tensor a64 = a.contiguous(), b64 = b.contiguous();
  return run_gradient(P, logits, a64.data_ptr<double>(), b64.data_ptr<double>(), 0.0);
}

// loss: a scalar, or (units, entries) with reduction "none" (Scoring::entries).
// saved = [dL/dpred_sum (N C), dL/dintersection (N C), dL/dpixel_sum (1)] for unit upstream gradient;
// codes = the labels' codes (N, V) uint8 for loss_backward to read instead of the labels (1 byte a
// pixel instead of up to 8), or an empty tensor for one-byte labels or C > MAX_CODED_CLASSES.
std::tuple<at::Tensor, at::Tensor, at::Tensor> loss(const at::Tensor& logits, const at::Tensor& labels, int64_t activation,
                                        bool squared, std::optional<int64_t> ignore_index, bool check_finite,
                                        bool check_labels, at::IntArrayRef flags, at::ArrayRef<double> scalars,
                                        std::optional<at::ArrayRef<double>> weight,
                                        std::optional<at::ArrayRef<double>> pixel_weight,
                                        std::optional<at::ArrayRef<double>> norm_weight) {
  KernelArgs P = make_args(logits, labels, activation, squared, ignore_index, check_finite || check_labels,
                           check_labels);
  const Scoring S = make_scoring(flags, scalars, weight, P.C);
  const PixelTerm T = make_pixel_term(P, scalars, pixel_weight, norm_weight);
  const bool unreduced = S.reduction == REDUCTION_NONE;
  TORCH_CHECK(!(unreduced && P.pixel), "fused loss: the per-pixel term needs a reduced loss");
  // Codes pay where the labels are wider than them; one-byte labels are read as they are.
  const bool code = P.C <= MAX_CODED_CLASSES && labels.element_size() > 1;
  at::Tensor codes = at::empty({code ? P.N : 0, P.V}, labels.options().dtype(at::kByte));
  P.codes_out = codes.numel() ? codes.data_ptr<uint8_t>() : nullptr;
  const Sums sums = run_statistics(P, logits, labels);
  auto saved = at::empty({2 * P.N * P.C + 1}, logits.options().dtype(at::kDouble));
  double* a = saved.data_ptr<double>();
  double* b = a + P.N * P.C;
  std::vector<double> value(unreduced ? S.units(P.N) * S.entries(P.C) : 1);
  score(S, sums.dice.data(), P.N, P.C, value.data(), a, b);
  for (double& v : value) v *= T.lambda_dice;
  for (int64_t i = 0; i < 2 * P.N * P.C; ++i) a[i] *= T.lambda_dice;
  double pixel_scale = 0;
  if (P.pixel && sums.pixel[2] != 0) {  // F.cross_entropy's weighted mean, any sign; 0 when nothing counts
    const double pixel = ((sums.pixel[0]) + T.smoothing / P.C * sums.pixel[1]) / sums.pixel[2];
    value[0] += T.lambda_pixel * pixel;
    pixel_scale = T.lambda_pixel / sums.pixel[2];
  }
  b[P.N * P.C] = pixel_scale;
  const auto options = logits.options().dtype(loss_dtype(logits));
  at::Tensor out = unreduced ? at::empty({S.units(P.N), S.entries(P.C)}, options) : at::empty({}, options);
  if (out.scalar_type() == at::kDouble) std::copy(value.begin(), value.end(), out.data_ptr<double>());
  else std::transform(value.begin(), value.end(), out.data_ptr<float>(), [](double v) { return static_cast<float>(v); });
  return std::make_tuple(out, saved, codes);
}

at::Tensor loss_backward(const at::Tensor& grad, const at::Tensor& logits, const at::Tensor& labels,
                         const at::Tensor& saved, const at::Tensor& codes, int64_t activation, bool squared,
                         std::optional<int64_t> ignore_index, at::IntArrayRef flags, at::ArrayRef<double> scalars,
                         std::optional<at::ArrayRef<double>> weight, std::optional<at::ArrayRef<double>> pixel_weight,
                         std::optional<at::ArrayRef<double>> norm_weight) {
  // The statistics pass's label codes when it wrote them (and they fit these logits), else the labels.
  const bool coded = codes.numel() == labels.numel() && codes.numel() > 0 && codes.scalar_type() == at::kByte;
  KernelArgs P = make_args(logits, coded ? codes : labels, activation, squared, ignore_index, false, false);
  if (coded) P.label_type = LABEL_CODES;
  const Scoring S = make_scoring(flags, scalars, weight, P.C);
  const PixelTerm T = make_pixel_term(P, scalars, pixel_weight, norm_weight);  // owns the weights P points to
  const bool unreduced = S.reduction == REDUCTION_NONE;
  const int64_t K = S.entries(P.C);
  TORCH_CHECK(grad.numel() == (unreduced ? S.units(P.N) * K : 1),
              "fused loss_backward: grad must have the loss's shape");
  TORCH_CHECK(saved.scalar_type() == at::kDouble && saved.numel() == 2 * P.N * P.C + 1,
              "fused loss_backward: saved must come from fused loss");
  const at::Tensor g64 = grad.to(at::kDouble).contiguous();
  const double* g = g64.data_ptr<double>();
  const at::Tensor s = saved.contiguous();
  std::vector<double> ab(s.data_ptr<double>(), s.data_ptr<double>() + 2 * P.N * P.C);
  for (int64_t i = 0; i < 2 * P.N * P.C; ++i) {  // times the gradient of the loss entry each class feeds
    const int64_t n = (i / P.C) % P.N, c = i % P.C, entry = S.pooled() ? 0 : std::max<int64_t>(c - S.first(), 0);
    ab[i] *= unreduced ? g[(S.batch ? 0 : n) * K + entry] : g[0];
  }
  return run_gradient(P, logits, ab.data(), ab.data() + P.N * P.C, unreduced ? 0.0 : g[0] * s.data_ptr<double>()[2 * P.N * P.C]);
}

// Eager mode: `loss` and `loss_backward` joined by a C++ autograd node. Python's autograd.Function
// (or register_autograd's wrapper) costs a Python frame, an operator call from Python and its
// argument conversion per backward: ~40 us of a ~400 us 4x4x128x128 forward+backward
// (docs/performance.md). Both operators are called through the dispatcher, so fake and meta
// tensors (FakeTensorMode, make_fx) reach their fake kernels; with create_graph=True the backward's
// `loss_backward` goes through its registered autograd, which refuses double backward.
std::optional<std::vector<double>> optional_vector(const c10::IValue& value) {
  if (value.isNone()) return std::nullopt;
  return value.toDoubleVector();
}

std::optional<at::ArrayRef<double>> optional_ref(const std::optional<std::vector<double>>& values) {
  if (!values.has_value()) return std::nullopt;
  return at::ArrayRef<double>(*values);
}

using OptionalDoubles = std::optional<at::ArrayRef<double>>;

const auto& loss_operator() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dice_fused::loss", "").typed<
      std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, bool,
                                                     std::optional<int64_t>, bool, bool, at::IntArrayRef,
                                                     at::ArrayRef<double>, OptionalDoubles, OptionalDoubles,
                                                     OptionalDoubles)>();
  return op;
}

const auto& loss_backward_operator() {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("dice_fused::loss_backward", "").typed<
      at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                 int64_t, bool, std::optional<int64_t>, at::IntArrayRef, at::ArrayRef<double>, OptionalDoubles,
                 OptionalDoubles, OptionalDoubles)>();
  return op;
}

class FoldedLossFunction : public torch::autograd::Function<FoldedLossFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& labels,
                            int64_t activation, bool squared, std::optional<int64_t> ignore_index, bool check_finite,
                            bool check_labels, at::IntArrayRef flags, at::ArrayRef<double> scalars,
                            OptionalDoubles weight, OptionalDoubles pixel_weight, OptionalDoubles norm_weight) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [value, saved, codes] = loss_operator().call(logits, labels, activation, squared, ignore_index, check_finite,
                                                      check_labels, flags, scalars, weight, pixel_weight, norm_weight);
    ctx->save_for_backward({logits, labels, saved, codes});
    auto& data = ctx->saved_data;
    data["activation"] = activation;
    data["squared"] = squared;
    data["ignore_index"] = ignore_index;
    data["flags"] = flags.vec();
    data["scalars"] = scalars.vec();
    data["weight"] = weight.has_value() ? c10::IValue(weight->vec()) : c10::IValue();
    data["pixel_weight"] = pixel_weight.has_value() ? c10::IValue(pixel_weight->vec()) : c10::IValue();
    data["norm_weight"] = norm_weight.has_value() ? c10::IValue(norm_weight->vec()) : c10::IValue();
    return value;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto& data = ctx->saved_data;
    const auto weight = optional_vector(data["weight"]), pixel_weight = optional_vector(data["pixel_weight"]),
               norm_weight = optional_vector(data["norm_weight"]);
    const auto gradient = [&] {
      return loss_backward_operator().call(
          grads[0], saved[0], saved[1], saved[2], saved[3], data["activation"].toInt(), data["squared"].toBool(),
          data["ignore_index"].toOptional<int64_t>(), data["flags"].toIntVector(), data["scalars"].toDoubleVector(),
          optional_ref(weight), optional_ref(pixel_weight), optional_ref(norm_weight));
    };
    at::Tensor grad;
    if (at::GradMode::is_enabled()) {
      grad = gradient();  // create_graph=True: through loss_backward's autograd, which refuses double backward
    } else {
      at::AutoDispatchBelowADInplaceOrView guard;  // straight to the kernel: no Python autograd wrapper
      grad = gradient();
    }
    torch::autograd::variable_list out(12);  // one per forward argument; only the logits get one
    out[0] = grad;
    return out;
  }
};

at::Tensor eager_loss(const at::Tensor& logits, const at::Tensor& labels, int64_t activation, bool squared,
                      std::optional<int64_t> ignore_index, bool check_finite, bool check_labels, at::IntArrayRef flags,
                      at::ArrayRef<double> scalars, std::optional<at::ArrayRef<double>> weight,
                      std::optional<at::ArrayRef<double>> pixel_weight,
                      std::optional<at::ArrayRef<double>> norm_weight) {
  return FoldedLossFunction::apply(logits, labels, activation, squared, ignore_index, check_finite, check_labels, flags,
                                   scalars, weight, pixel_weight, norm_weight);
}

std::string isa() { return kernels().name; }

#if defined(FUSED_SOURCE_DIGEST)
// Kept in the library's bytes for cpu.is_stale, which reads it without loading the library.
#define FUSED_STRINGIFY_(token) #token
#define FUSED_STRINGIFY(token) FUSED_STRINGIFY_(token)
extern "C" __attribute__((used, visibility("default"))) const char dice_fused_source_digest[] =
    FUSED_STRINGIFY(FUSED_SOURCE_DIGEST);
#endif

TORCH_LIBRARY(dice_fused, m) {
  m.def("statistics(Tensor logits, Tensor labels, int activation, bool squared, int? ignore_index,"
        " bool check_finite, bool check_labels) -> (Tensor, Tensor)");
  m.def("gradient(Tensor logits, Tensor labels, Tensor a, Tensor b, int activation, bool squared,"
        " int? ignore_index) -> Tensor");
  m.def("loss(Tensor logits, Tensor labels, int activation, bool squared, int? ignore_index, bool check_finite,"
        " bool check_labels, int[] flags, float[] scalars, float[]? weight, float[]? pixel_weight,"
        " float[]? norm_weight) -> (Tensor, Tensor, Tensor)");
  m.def("loss_backward(Tensor grad, Tensor logits, Tensor labels, Tensor saved, Tensor codes, int activation,"
        " bool squared,"
        " int? ignore_index, int[] flags, float[] scalars, float[]? weight, float[]? pixel_weight,"
        " float[]? norm_weight) -> Tensor");
  m.def("eager_loss(Tensor logits, Tensor labels, int activation, bool squared, int? ignore_index,"
        " bool check_finite, bool check_labels, int[] flags, float[] scalars, float[]? weight,"
        " float[]? pixel_weight, float[]? norm_weight) -> Tensor");
  m.def("isa() -> str", &isa);
  m.def("folded_loss_layout() -> str[]", &folded_loss_layout);
  m.def("pooled_buffers() -> int", &pooled_buffers);
}

TORCH_LIBRARY_IMPL(dice_fused, CPU, m) {
  m.impl("statistics", &statistics);
  m.impl("gradient", &gradient);
  m.impl("loss", &loss);
  m.impl("loss_backward", &loss_backward);
}

TORCH_LIBRARY_IMPL(dice_fused, CompositeImplicitAutograd, m) { m.impl("eager_loss", &eager_loss); }
