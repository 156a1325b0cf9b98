"""Hard segmentation metrics from label maps: per-class Dice, precision, recall and F-beta.

Counts are taken over the whole batch (``per_image=False``) or per image. A ratio whose
denominator is zero (for Dice: the class is absent from both prediction and target) is undefined
and returned as ``empty_value`` (default NaN, so ``torch.nanmean`` skips it).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from .checks import comparable_labels, ignored_pixels, outside_range


def predict_labels(logits: Tensor, activation: str = "softmax", threshold: float = 0.5) -> Tensor:
    """Hard labels from ``(N, C, *spatial)`` scores: argmax for softmax; for a one-channel sigmoid,
    ``p > threshold``."""
    if activation == "softmax" or logits.shape[1] > 1:
        return logits.argmax(1)
    probs = torch.sigmoid(logits) if activation == "sigmoid" else logits
    return (probs[:, 0] > threshold).long()


def confusion_counts(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: Optional[int] = None,
                     per_image: bool = False) -> Tuple[Tensor, Tensor, Tensor]:
    """``(tp, fp, fn)`` per class, shape ``(C,)`` or ``(N, C)`` with ``per_image``; int64 counts."""
    if pred.shape != target.shape:
        raise ValueError(f"pred and target label maps differ in shape: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if pred.is_floating_point() or target.is_floating_point():
        raise TypeError("metrics take integer label maps; use predict_labels(logits) for scores")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, target = comparable_labels(pred), comparable_labels(target)
    ignored = ignored_pixels(target, ignore_index)
    keep = torch.ones_like(target, dtype=torch.bool) if ignored is None else ~ignored
    for name, labels in (("pred", pred), ("target", target)):
        bad = keep & outside_range(labels, 0, num_classes)
        if bad.any():
            raise ValueError(f"{name} labels out of range [0, {num_classes - 1}]: {torch.unique(labels[bad])[:5].tolist()}")
    classes = torch.arange(num_classes, device=pred.device).view(1, num_classes, *([1] * (pred.ndim - 1)))
    p = (pred.unsqueeze(1) == classes) & keep.unsqueeze(1)
    t = (target.unsqueeze(1) == classes) & keep.unsqueeze(1)
    axes = tuple(range(2, p.ndim)) if per_image else (0, *range(2, p.ndim))
    tp = (p & t).sum(axes)
    fp = (p & ~t).sum(axes)
    fn = (~p & t).sum(axes)
    return tp, fp, fn


def _ratio(numerator: Tensor, denominator: Tensor, empty_value: float) -> Tensor:
    numerator, denominator = numerator.double(), denominator.double()
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.full_like(numerator, empty_value))


def fbeta(pred: Tensor, target: Tensor, num_classes: int, beta: float = 1.0, *, ignore_index: Optional[int] = None,
          per_image: bool = False, empty_value: float = float("nan")) -> Tensor:
    """``(1 + b^2) tp / ((1 + b^2) tp + b^2 fn + fp)`` per class (float64)."""
    tp, fp, fn = confusion_counts(pred, target, num_classes, ignore_index=ignore_index, per_image=per_image)
    b2 = beta ** 2
    return _ratio((1 + b2) * tp.double(), (1 + b2) * tp.double() + b2 * fn.double() + fp.double(), empty_value)


def dice(pred: Tensor, target: Tensor, num_classes: int, **kwargs) -> Tensor:
    """Hard Dice ``2 tp / (2 tp + fp + fn)`` per class: F-beta with ``beta=1``."""
    return fbeta(pred, target, num_classes, 1.0, **kwargs)


def precision(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: Optional[int] = None,
              per_image: bool = False, empty_value: float = float("nan")) -> Tensor:
    """``tp / (tp + fp)`` per class; ``empty_value`` where the class is never predicted."""
    tp, fp, _ = confusion_counts(pred, target, num_classes, ignore_index=ignore_index, per_image=per_image)
    return _ratio(tp, tp + fp, empty_value)


def recall(pred: Tensor, target: Tensor, num_classes: int, *, ignore_index: Optional[int] = None,
           per_image: bool = False, empty_value: float = float("nan")) -> Tensor:
    """``tp / (tp + fn)`` per class; ``empty_value`` where the class is absent from the target."""
    tp, _, fn = confusion_counts(pred, target, num_classes, ignore_index=ignore_index, per_image=per_image)
    return _ratio(tp, tp + fn, empty_value)
