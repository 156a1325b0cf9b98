// torch.ops.dice_fused: the fused soft-Dice operators on the CPU (schemas, CPU kernels, input
// validation inside the kernel's own pass). The scoring of the sums and its gradient are in
// fused_scoring.cpp, the gradient buffers' pool in gradient_pool.cpp, the C++ autograd node of
// eager_loss in folded_autograd.cpp.
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
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "fused_args.h"
#include "fused_scoring.h"
#include "gradient_pool.h"

FUSED_DECLARE_KERNELS(isa_baseline)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
FUSED_DECLARE_KERNELS(isa_avx2)
FUSED_DECLARE_KERNELS(isa_avx512)
#endif

using namespace dice_fused;

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
  m.def("folded_loss_layout() -> str[]", &dice_fused::folded_loss_layout);
  m.def("pooled_buffers() -> int", &dice_fused::pooled_buffers);
}

TORCH_LIBRARY_IMPL(dice_fused, CPU, m) {
  m.impl("statistics", &statistics);
  m.impl("gradient", &gradient);
  m.impl("loss", &loss);
  m.impl("loss_backward", &loss_backward);
}

