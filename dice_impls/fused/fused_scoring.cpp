// The scoring of the fused Dice sums and the folded loss operator's configuration (fused_scoring.h).
#include "fused_scoring.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace dice_fused {

std::vector<std::string> folded_loss_layout() {
  std::vector<std::string> names{FOLDED_FLAGS(FOLDED_NAME) "|", FOLDED_SCALARS(FOLDED_NAME)};
  return names;
}

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

namespace {

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

}  // namespace

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


}  // namespace dice_fused
