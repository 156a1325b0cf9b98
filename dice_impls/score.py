"""From per-image, per-class sums to the loss: the half of the semantics every implementation shares.

Implementations differ only in how they compute the statistics (the expensive part, of the size
of the input); everything after that (batch pooling, background, weights, the score of the Dice
family (F-beta, Tversky, Jaccard), micro and generalized pooling, smoothing, clamping, loss form,
absent classes, reduction) happens here on ``(N, C)`` tensors, so autograd carries the gradient
back to whatever produced the statistics.
"""

from __future__ import annotations

from typing import NamedTuple, Tuple

import torch
from torch import Tensor

from .spec import DiceSpec


class DiceStatistics(NamedTuple):
    """Per-image, per-class sums, each of shape ``(N, C)`` (float32 or wider).

    ``intersection = sum m p g`` (``sum m min(p, g)`` for ``soft_label`` with a float target and
    ``k = 1``), ``pred_sum = sum m p**k``, ``target_sum = sum m g**k``.
    """

    intersection: Tensor
    pred_sum: Tensor
    target_sum: Tensor

    def pooled(self) -> "DiceStatistics":
        """Sums over the batch, shape ``(1, C)``: what batch Dice (and a distributed reduction) uses."""
        return DiceStatistics(*(s.sum(0, keepdim=True) for s in self))


def loss_from_statistics(stats: DiceStatistics, spec: DiceSpec) -> Tensor:
    """The Dice loss of ``spec`` from per-image statistics (see ``DiceSpec`` for every field)."""
    if spec.batch:
        stats = stats.pooled()
    tp, pred_sum, target_sum = stats
    units, channels = tp.shape
    weight = _weight(spec, channels, tp)
    if not spec.include_background:
        tp, pred_sum, target_sum, weight = tp[:, 1:], pred_sum[:, 1:], target_sum[:, 1:], weight[1:]
    numerator, denominator = score_terms(tp, pred_sum, target_sum, spec)
    if spec.average == "micro" or spec.generalized is not None:
        pool = weight if spec.generalized is None else generalized_weights(target_sum, spec.generalized)
        numerator, denominator = ((s * pool).sum(1, keepdim=True) for s in (numerator, denominator))
        weight = weight.new_ones(1)

    numerator = numerator + spec.smooth_nr
    denominator = denominator + spec.smooth_dr
    if spec.min_denominator > 0:  # 0: no clamp, so a negative denominator (scores outside [0, 1]) is MONAI's value
        denominator = denominator.clamp_min(spec.min_denominator)
    empty = denominator == 0
    score = torch.where(empty, torch.ones_like(numerator), numerator / torch.where(empty, 1.0, denominator))
    if spec.log_loss:
        # One clamp for every statistics dtype, so float32 and float64 implementations agree.
        loss = -torch.log(score.clamp_min(torch.finfo(torch.float32).tiny))
    elif spec.negate:
        loss = -score
    elif spec.focal_gamma != 1:
        loss = focal_power(1 - score, spec.focal_gamma)
    else:
        loss = 1 - score

    weights = weight.expand_as(loss)
    if spec.absent_classes == "zero":
        loss = loss * (target_sum > 0)
    elif spec.absent_classes == "exclude":
        weights = weights * (target_sum > 0)
    weighted = loss * weights
    if spec.reduction == "none":
        return weighted
    if spec.reduction == "sum":
        return weighted.sum()
    normalizer = weights.sum(1)
    no_class = normalizer == 0  # only with absent_classes="exclude": kornia scores such a unit 1
    per_unit = torch.where(no_class, 1.0, weighted.sum(1) / torch.where(no_class, 1.0, normalizer))
    # No image (an empty batch, e.g. a data-parallel rank's share): 0, like the pooled sums of
    # batch Dice, and still attached to the graph; a plain mean of nothing would be NaN.
    return per_unit.mean() if per_unit.numel() else per_unit.sum()


def score_terms(tp: Tensor, pred_sum: Tensor, target_sum: Tensor, spec: DiceSpec) -> Tuple[Tensor, Tensor]:
    """The score's numerator and denominator before smoothing, per unit and class.

    Both are linear in ``(tp, P, G)`` (``score_coefficients``), so pooling them over classes
    (micro, generalized) equals scoring the pooled sums.
    """
    numerator_tp, denominator_tp, denominator_pred, denominator_target = score_coefficients(spec)
    denominator = denominator_pred * pred_sum + denominator_target * target_sum
    if denominator_tp:
        denominator = denominator + denominator_tp * tp
    return numerator_tp * tp, denominator


def score_coefficients(spec: DiceSpec) -> Tuple[float, float, float, float]:
    """``(nt, dt, dp, dg)`` of the score ``nt tp / (dt tp + dp P + dg G)`` before smoothing: F-beta
    ``(1 + b², 0, 1, b²)``; Tversky ``(1, 1 - α - β, α, β)`` (``tp + α fp + β fn``); Jaccard in
    MONAI's form ``(2, -2, 2, 2)``. The fused operator scores with the same four numbers."""
    if spec.jaccard:
        return 2.0, -2.0, 2.0, 2.0
    if spec.fp_weight is not None:
        return 1.0, 1.0 - spec.fp_weight - spec.fn_weight, float(spec.fp_weight), float(spec.fn_weight)
    beta2 = float(spec.beta) ** 2
    return 1.0 + beta2, 0.0, 1.0, beta2


def generalized_weights(target_sum: Tensor, kind: str) -> Tensor:
    """Sudre et al.'s class weights ``1/G**2``, ``1/G`` or 1 per unit, constants for autograd.

    A weight that is not finite (the class is absent from the unit, or ``G`` so small that its
    reciprocal overflows) becomes the largest finite weight of the unit, 0 if there is none:
    MONAI 1.6's rule.
    """
    g = target_sum.detach()
    if kind == "uniform":
        return torch.ones_like(g)
    raw = torch.reciprocal(g * g if kind == "square" else g)
    finite = torch.isfinite(raw)
    raw = torch.where(finite, raw, 0.0)
    return torch.where(finite, raw, raw.amax(1, keepdim=True))


def focal_power(base: Tensor, gamma: float) -> Tensor:
    """``base**gamma`` with ``base`` clamped at 0; at 0 the value and gradient are 0 (no inf for gamma < 1,
    whose inf * 0 would be a NaN gradient). For gamma > 0."""
    positive = base > 0
    return torch.where(positive, torch.where(positive, base, 1.0) ** gamma, 0.0)


def _weight(spec: DiceSpec, channels: int, like: Tensor) -> Tensor:
    if spec.weight is None:
        return like.new_ones(channels)
    return torch.tensor(spec.weight, dtype=like.dtype, device=like.device)
