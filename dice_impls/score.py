"""From per-image, per-class sums to the loss: the half of the semantics every implementation shares.

Implementations differ only in how they compute the statistics (the expensive part, of the size
of the input); everything after that (batch pooling, micro averaging, background, weights,
smoothing, clamping, loss form, absent classes, reduction) happens here on ``(N, C)`` tensors,
so autograd carries the gradient back to whatever produced the statistics.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .spec import DiceSpec


class DiceStatistics(NamedTuple):
    """Per-image, per-class sums, each of shape ``(N, C)`` (float32 or wider).

    ``intersection = sum m p g``, ``pred_sum = sum m p**k``, ``target_sum = sum m g**k``.
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
    if spec.average == "micro":
        tp, pred_sum, target_sum = ((s * weight).sum(1, keepdim=True) for s in (tp, pred_sum, target_sum))
        weight = weight.new_ones(1)

    beta2 = spec.beta ** 2
    numerator = (1 + beta2) * tp + spec.smooth_nr
    denominator = (pred_sum + beta2 * target_sum + spec.smooth_dr).clamp_min(spec.min_denominator)
    empty = denominator == 0
    score = torch.where(empty, torch.ones_like(numerator), numerator / torch.where(empty, 1.0, denominator))
    if spec.log_loss:
        # One clamp for every statistics dtype, so float32 and float64 implementations agree.
        loss = -torch.log(score.clamp_min(torch.finfo(torch.float32).tiny))
    elif spec.negate:
        loss = -score
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
    return per_unit.mean()


def _weight(spec: DiceSpec, channels: int, like: Tensor) -> Tensor:
    if spec.weight is None:
        return like.new_ones(channels)
    return torch.tensor(spec.weight, dtype=like.dtype, device=like.device)
