// The scoring of the fused Dice sums (dice_impls/score.py: loss_from_statistics) and the folded loss
// operator's configuration by name (fused_scoring.cpp).
#pragma once
#include <ATen/core/ATen_fwd.h>
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fused_args.h"

namespace dice_fused {

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

// The names of the flags, "|", the names of the scalars.
std::vector<std::string> folded_loss_layout();

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
                     int64_t C);

// The loss of (3, N, C) sums: a scalar (mean, sum) in out[0], or the (units, entries) weighted losses
// (none) in out. Writes into a and b (N x C) dL/dpred_sum and dL/dintersection for a unit upstream
// gradient (none: of the entry that class feeds, which loss_backward scales by that entry's gradient).
void score(const Scoring& S, const double* stats, int64_t N, int64_t C, double* out, double* a, double* b);

// The per-pixel term's configuration: the scalars lambda_dice, lambda_pixel, pixel_gamma,
// label_smoothing; the per-class weights of its numerator and normaliser (None: ones).
struct PixelTerm {
  double lambda_dice = 1, lambda_pixel = 0, gamma = 0, smoothing = 0, weight_sum = 0;
  std::vector<double> weight, norm;
};

// Reads the pixel term's scalars and weights into T and points P's pixel-term fields at T's weights.
PixelTerm make_pixel_term(KernelArgs& P, at::ArrayRef<double> scalars, std::optional<at::ArrayRef<double>> pixel_weight,
                          std::optional<at::ArrayRef<double>> norm_weight);

}  // namespace dice_fused
