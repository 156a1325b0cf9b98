"""Dice combined with a per-pixel loss: Dice + cross-entropy and Dice + focal.

``total = lambda_dice * Dice + lambda_pixel * Pixel``, where

* **Dice** is the spec's loss, its statistics computed by the named implementation;
* **Pixel** is cross-entropy or focal on the same logits, sharing the spec's activation (softmax:
  the categorical form over the channels; sigmoid: the binary form per channel), ``ignore_index``
  and target encoding. Ignored pixels (and the seed's out-of-range labels) leave it. With a label
  map no one-hot target is built for cross-entropy: softmax goes through ``F.cross_entropy`` on
  the labels, sigmoid through ``softplus`` and a gather of the logit at the label (``cross_entropy``,
  ``binary_cross_entropy``); the softmax focal term gathers ``log p`` at the label.
* **reduction** (the spec's) reduces each term over its own elements: Dice over (units, classes)
  as ``DiceSpec`` says; the pixel term over the counted pixels (softmax) or (pixel, channel)
  elements (sigmoid). ``"mean"``: Dice's mean, the pixel term's mean (softmax with a class weight:
  ``sum w_y l / sum w_y``, ``F.cross_entropy``'s rule; sigmoid: the mean of ``w_c l``, as
  ``F.binary_cross_entropy_with_logits``), 0 when no pixel counts. ``"sum"``: both summed (MONAI's
  ``DiceCELoss(reduction="sum")``). ``"none"``: the terms have no common shape, so ``forward``
  refuses it and ``terms()`` returns both unreduced.
* **weight**: the spec's class weights always weight the Dice term; with ``weighted_pixel=True``
  they also weight the pixel term (per class as above), MONAI's ``DiceCELoss(weight=...)``.

``terms()`` is the one seam between the two parts: a fused Dice + cross-entropy operator replaces
it in one call. docs/conventions.md "Compound losses" restates these rules with the peers'.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import (check_focal_parameters, check_label_smoothing, ignored_pixels, label_equals, label_range,
                     outside_range, prepare_inputs)
from .fused import compound_loss as fused_compound_loss
from .registry import get_implementation, resolve_spec
from .score import focal_power, loss_from_statistics
from .spec import DiceSpec

PIXEL_REDUCTIONS = ("mean", "sum", "none")
_NO_IGNORE = -100  # F.cross_entropy's default; validated label maps never hold it unless it is ignored


def cross_entropy(logits: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
                  ignore_index: Optional[int] = None, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy of ``logits (N, C, *spatial)`` without a one-hot target.

    ``target``: a label map ``(N, *spatial)`` of any integer dtype (converted to int64, what
    ``F.cross_entropy`` reads, when it is not already) or class probabilities ``(N, C, *spatial)``.
    Pixels labelled ``ignore_index`` leave the loss; half logits are computed in float32 (their
    log-probabilities would keep 3 digits). ``reduction="mean"`` is ``F.cross_entropy``'s
    (weighted) mean, except that a batch whose counted pixels' weights sum to 0 (none counted, or
    all of zero class weight) gives 0 instead of NaN; ``"none"`` gives ``(N, *spatial)``.
    """
    _check_reduction(reduction)
    check_label_smoothing(label_smoothing)
    logits = _wide(logits)
    weight = None if weight is None else weight.to(logits)
    if target.is_floating_point():
        return F.cross_entropy(logits, target.to(logits.dtype), weight=weight, label_smoothing=label_smoothing,
                               reduction=reduction)
    labels = target.long()
    ignore = _NO_IGNORE if ignore_index is None else ignore_index
    kwargs = dict(weight=weight, ignore_index=ignore, label_smoothing=label_smoothing)
    if reduction != "mean":
        return F.cross_entropy(logits, labels, reduction=reduction, **kwargs)
    total = F.cross_entropy(logits, labels, reduction="sum", **kwargs)
    counted = labels != ignore
    if weight is None:
        normalizer = counted.sum(dtype=total.dtype)
    else:
        normalizer = torch.where(counted, weight[torch.where(counted, labels, 0)], 0).sum()
    # No weight counted (no counted pixel, or weights summing to 0): 0, as the fused kernels give; the
    # smoothing part of total need not be 0 then. Otherwise F.cross_entropy's weighted mean, whatever
    # the weights' signs (a NaN weight of a counted class gives NaN).
    return torch.where(normalizer != 0, total / torch.where(normalizer != 0, normalizer, 1), 0.0)


def binary_cross_entropy(logits: Tensor, target: Tensor, *, weight: Optional[Tensor] = None,
                         pos_weight: Optional[Tensor] = None, ignore_index: Optional[int] = None,
                         reduction: str = "mean") -> Tensor:
    """Sigmoid cross-entropy per channel of ``logits (N, C, *spatial)``.

    ``target``: float ``(N, C, *spatial)`` in [0, 1] (``F.binary_cross_entropy_with_logits``), or a
    label map ``(N, *spatial)``: channel ``c``'s target is ``label == c`` (one channel: ``label == 1``),
    pixels labelled ``ignore_index`` or outside the label range leave the loss. For a label map the
    loss is ``softplus(x) - x`` at the labelled channel and ``softplus(x)`` elsewhere (with
    ``pos_weight``: ``pos_weight * softplus(-x)`` at the labelled channel), summed from a gather of
    the labelled logit, so no one-hot is built. Half logits are computed in float32. ``weight``
    and ``pos_weight`` hold one value per channel (or a scalar) and follow
    ``F.binary_cross_entropy_with_logits``: ``"mean"`` divides by the number of counted elements,
    0 when none counts; ``"none"`` gives ``(N, C, *spatial)``.
    """
    _check_reduction(reduction)
    logits = _wide(logits)
    channels = logits.shape[1]
    shape = (1, channels) + (1,) * (logits.ndim - 2)
    weight = None if weight is None else weight.to(logits).expand(channels).reshape(shape)
    pos_weight = None if pos_weight is None else pos_weight.to(logits).expand(channels).reshape(shape)
    if target.is_floating_point():
        pos = None if pos_weight is None else pos_weight.reshape(shape[1:])  # F broadcasts it over the last dims
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), weight=weight,
                                                  pos_weight=pos, reduction=reduction)
    positive_channel, has_positive, counted = _label_positions(target, channels, ignore_index)
    index = positive_channel.unsqueeze(1)
    negative = F.softplus(logits)  # the loss of every element whose target is 0
    x_pos = logits.gather(1, index)
    positive = F.softplus(-x_pos)  # the loss of the labelled element, whose target is 1
    if pos_weight is not None:
        positive = positive * pos_weight.expand_as(logits).gather(1, index)
    if weight is not None:
        negative = negative * weight
        positive = positive * weight.expand_as(logits).gather(1, index)
    correction = (positive - negative.gather(1, index)) * has_positive.unsqueeze(1)
    keep = counted.unsqueeze(1).to(logits.dtype)
    if reduction == "none":
        return negative.scatter_add(1, index, correction) * keep
    total = (negative * keep).sum() + (correction * keep).sum()
    if reduction == "sum":
        return total
    count = counted.sum(dtype=total.dtype) * channels
    return total / torch.where(count > 0, count, 1)


def _wide(logits: Tensor) -> Tensor:
    """Half logits as float32 (their log-probabilities would round to 3 digits); wider dtypes pass."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _label_positions(target: Tensor, channels: int, ignore_index: Optional[int]):
    """``(positive_channel, has_positive, counted)`` of a label map, each ``(N, *spatial)``."""
    counted = _in_range_and_kept(target, channels, ignore_index)
    if channels == 1:
        return torch.zeros_like(target, dtype=torch.long), counted & label_equals(target, 1), counted
    return torch.where(counted, target, 0).long(), counted, counted


def _in_range_and_kept(target: Tensor, channels: int, ignore_index: Optional[int]) -> Tensor:
    """Labels inside the label range and not ``ignore_index``, compared exactly in any label dtype."""
    counted = ~outside_range(target, *label_range(channels))
    ignored = ignored_pixels(target, ignore_index)
    return counted if ignored is None else counted & ~ignored


def focal_loss(logits: Tensor, target: Tensor, spec: DiceSpec, *, gamma: float = 2.0,
               alpha: Optional[float] = None, weight: Optional[Tensor] = None, reduction: str = "mean") -> Tensor:
    """Focal loss (Lin et al. 2017) on validated inputs; ``gamma=0, alpha=None`` is cross-entropy.

    ``alpha`` weights the foreground: for sigmoid, positives by ``alpha`` and negatives by
    ``1 - alpha``; for softmax, classes ``c >= 1`` by ``alpha`` and class 0 by ``1 - alpha``.
    ``weight`` (one per channel) multiplies each class's term. Softmax: per pixel
    ``-a_y w_y (1 - p_y)**gamma log p_y`` with ``log p_y`` gathered at the label (no one-hot),
    ``"mean"`` over counted pixels, ``"none"`` of shape ``(N, *spatial)``. Sigmoid: per element
    ``BCE * (1 - p_t)**gamma``, ``"mean"`` over counted elements, ``"none"`` ``(N, C, *spatial)``.
    """
    if spec.activation == "none":
        raise ValueError("cross-entropy and focal terms need logits: use activation='softmax' or 'sigmoid'")
    check_focal_parameters(gamma, alpha)
    _check_reduction(reduction)
    x = _wide(logits)
    channels = x.shape[1]
    counted = _counted_pixels(target, channels, spec)
    keep = counted.to(x.dtype)
    class_factor = x.new_ones(channels) if weight is None else weight.to(x)
    if alpha is not None and spec.activation == "softmax":
        class_factor = class_factor * torch.tensor([1 - alpha] + [alpha] * (channels - 1), dtype=x.dtype,
                                                   device=x.device)
    if spec.activation == "softmax":
        log_p = F.log_softmax(x, dim=1)
        # (1 - p)**gamma through focal_power: where p rounds to 1 and gamma < 1, a plain power has an
        # infinite gradient, and inf * 0 makes the logits' gradient NaN
        if target.is_floating_point():  # class probabilities: the expectation over the target
            per_class = -target.to(x.dtype) * _modulating(log_p, gamma) * log_p
            per_pixel = (per_class * _channel_view(class_factor, x)).sum(1)
        else:
            labels = torch.where(counted, target, 0).long()
            log_p_y = log_p.gather(1, labels.unsqueeze(1)).squeeze(1)
            per_pixel = -class_factor[labels] * _modulating(log_p_y, gamma) * log_p_y
        per_pixel = per_pixel * keep
        return _reduce(per_pixel, reduction, keep.sum())
    g = _binary_target(target, channels, x.dtype)
    # (1 - p_t)**gamma as exp(gamma * logsigmoid(-x (2g - 1))): exact where p_t rounds to 1
    modulating = torch.exp(gamma * F.logsigmoid(-x * (2 * g - 1))) if gamma else 1.0
    per_value = F.binary_cross_entropy_with_logits(x, g, reduction="none") * modulating
    if alpha is not None:
        per_value = per_value * (alpha * g + (1 - alpha) * (1 - g))
    per_value = per_value * _channel_view(class_factor, x) * keep.unsqueeze(1)
    return _reduce(per_value, reduction, keep.sum() * channels)


def _modulating(log_p: Tensor, gamma: float):
    """The focal factor ``(1 - p)**gamma`` of the log-probabilities ``log_p`` (1 for gamma = 0)."""
    return focal_power(1 - log_p.exp(), gamma) if gamma else 1.0


def _binary_target(target: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """The per-channel {0, 1} target of the sigmoid focal term (a one-hot for label maps)."""
    if target.is_floating_point():
        return target.to(dtype)
    if channels == 1:
        return (target == 1).unsqueeze(1).to(dtype)
    classes = torch.arange(channels, device=target.device).view(1, channels, *([1] * (target.ndim - 1)))
    return (target.unsqueeze(1) == classes).to(dtype)


def _channel_view(values: Tensor, like: Tensor) -> Tensor:
    return values.view(1, -1, *([1] * (like.ndim - 2)))


def _reduce(values: Tensor, reduction: str, count: Tensor) -> Tensor:
    if reduction == "none":
        return values
    total = values.sum()
    return total if reduction == "sum" else total / torch.where(count > 0, count, 1)


def _counted_pixels(target: Tensor, channels: int, spec: DiceSpec) -> Tensor:
    """Pixels of the per-pixel term: not ignored and (for label maps) inside the label range."""
    if target.is_floating_point():
        return torch.ones_like(target[:, 0], dtype=torch.bool)
    return _in_range_and_kept(target, channels, spec.ignore_index)


def _check_reduction(reduction: str) -> None:
    if reduction not in PIXEL_REDUCTIONS:
        raise ValueError(f"reduction must be one of {PIXEL_REDUCTIONS}, got {reduction!r}")


class CompoundTerms(NamedTuple):
    """The two terms of a compound loss, each reduced by the spec's ``reduction``."""

    dice: Tensor
    pixel: Tensor


class _CompoundLoss(nn.Module):
    def __init__(self, impl: str, spec: Optional[DiceSpec], lambda_dice: float, lambda_pixel: float,
                 weighted_pixel: bool, fields: dict) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_pixel < 0:
            raise ValueError(f"term weights must be >= 0, got {lambda_dice} and {lambda_pixel}")
        self.implementation = get_implementation(impl)
        self.spec = resolve_spec(spec, fields)
        if self.spec.activation == "none":
            raise ValueError("cross-entropy and focal terms need logits: use activation='softmax' or 'sigmoid'")
        if weighted_pixel and self.spec.weight is None:
            raise ValueError("weighted_pixel=True needs the spec's weight (one per class)")
        self.lambda_dice, self.lambda_pixel, self.weighted_pixel = lambda_dice, lambda_pixel, weighted_pixel

    def terms(self, logits: Tensor, target: Tensor) -> CompoundTerms:
        """The Dice and per-pixel terms of validated inputs, each reduced by ``spec.reduction``."""
        logits, target = prepare_inputs(logits, target, self.spec, check_finite=True)
        if self.implementation.label_maps_only and target.is_floating_point():
            raise TypeError(f"impl={self.implementation.name!r} takes integer label maps only; for float one-hot "
                            "or soft targets use impl='vectorized'")
        dice = loss_from_statistics(self.implementation.statistics(logits, target, self.spec), self.spec)
        return CompoundTerms(dice, self.pixel_term(logits, target))

    def pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        raise NotImplementedError

    def class_weight(self, like: Tensor) -> Optional[Tensor]:
        if not self.weighted_pixel:
            return None
        return torch.tensor(self.spec.weight, dtype=like.dtype, device=like.device)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.spec.reduction == "none":
            raise ValueError(
                "reduction='none' has no common shape for the Dice term (units, classes) and the per-pixel "
                "term; call .terms(logits, target) for both unreduced, or use 'mean' or 'sum'"
            )
        if self.implementation.name == "fused":  # both terms in the fused kernel's two passes, where it can
            fused = fused_compound_loss(logits, target, self.spec, lambda_dice=self.lambda_dice,
                                        lambda_pixel=self.lambda_pixel, **self.fused_pixel_term())
            if fused is not None:
                return fused
        dice, pixel = self.terms(logits, target)
        return self.lambda_dice * dice + self.lambda_pixel * pixel

    def fused_pixel_term(self) -> dict:
        """The pixel term in ``fused.compound_loss``'s words."""
        raise NotImplementedError


class DiceCELoss(_CompoundLoss):
    """``lambda_dice * Dice + lambda_ce * cross-entropy`` (binary cross-entropy with sigmoid).

    Cross-entropy is computed without a one-hot target (see the module docstring for the
    reduction and weight rules); ``weighted_ce=True`` weights it by the spec's ``weight``.
    """

    def __init__(self, impl: str = "vectorized", spec: Optional[DiceSpec] = None, *, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, weighted_ce: bool = False, **fields) -> None:
        super().__init__(impl, spec, lambda_dice, lambda_ce, weighted_ce, fields)

    def fused_pixel_term(self) -> dict:
        return dict(class_weight=self.spec.weight if self.weighted_pixel else None, normalize_by_weight=True)

    def pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        x, reduction, weight = logits, self.spec.reduction, self.class_weight(logits)
        if target.is_floating_point():
            fn = cross_entropy if self.spec.activation == "softmax" else binary_cross_entropy
            return fn(x, target, weight=weight, reduction=reduction)
        if self.spec.activation == "sigmoid":
            return binary_cross_entropy(x, target, weight=weight, ignore_index=self.spec.ignore_index,
                                        reduction=reduction)
        ignore_index = self.spec.ignore_index
        if self.spec.out_of_range == "zero_target":  # the seed's labels >= C leave the term like ignored ones
            ignore_index = _NO_IGNORE if ignore_index is None else ignore_index
            target = torch.where(_counted_pixels(target, x.shape[1], self.spec), target.long(), ignore_index)
        return cross_entropy(x, target, weight=weight, ignore_index=ignore_index, reduction=reduction)


class DiceFocalLoss(_CompoundLoss):
    """``lambda_dice * Dice + lambda_focal * focal(gamma, alpha)``; ``weighted_focal=True``
    multiplies each class's focal term by the spec's ``weight``."""

    def __init__(self, impl: str = "vectorized", spec: Optional[DiceSpec] = None, *, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0, gamma: float = 2.0, alpha: Optional[float] = None,
                 weighted_focal: bool = False, **fields) -> None:
        super().__init__(impl, spec, lambda_dice, lambda_focal, weighted_focal, fields)
        check_focal_parameters(gamma, alpha)
        self.gamma, self.alpha = gamma, alpha

    def fused_pixel_term(self) -> dict:
        return dict(gamma=self.gamma, alpha=self.alpha, class_weight=self.spec.weight if self.weighted_pixel else None,
                    normalize_by_weight=False)

    def pixel_term(self, logits: Tensor, target: Tensor) -> Tensor:
        return focal_loss(logits, target, self.spec, gamma=self.gamma, alpha=self.alpha,
                          weight=self.class_weight(logits), reduction=self.spec.reduction)

