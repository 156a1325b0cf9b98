"""Dice combined with a per-pixel loss: Dice + cross-entropy and Dice + focal.

The per-pixel terms share the Dice spec's activation, ignore_index and target encoding: softmax
gives the categorical form, sigmoid the per-channel binary form. Ignored pixels (and the seed's
out-of-range labels) leave the per-pixel mean; a batch with no counted pixel gives 0 for that term.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .checks import label_range, prepare_inputs
from .fused import compound_loss as fused_compound_loss
from .registry import get_implementation, resolve_spec
from .score import loss_from_statistics
from .spec import DiceSpec
from .vectorized import one_hot_target


def focal_loss(logits: Tensor, target: Tensor, spec: DiceSpec, *, gamma: float = 2.0,
               alpha: Optional[float] = None) -> Tensor:
    """Focal loss (Lin et al. 2017) on validated inputs; ``gamma=0, alpha=None`` is cross-entropy.

    ``alpha`` weights the foreground: for sigmoid, positives by ``alpha`` and negatives by
    ``1 - alpha``; for softmax, classes ``c >= 1`` by ``alpha`` and class 0 by ``1 - alpha``.
    """
    if spec.activation == "none":
        raise ValueError("cross-entropy and focal terms need logits: use activation='softmax' or 'sigmoid'")
    x = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float32; float64 stays float64
    channels = x.shape[1]
    g, _ = one_hot_target(target, channels, spec, x.dtype)
    counted = _counted_pixels(target, channels, spec).unsqueeze(1).to(x.dtype)
    if spec.activation == "softmax":
        log_p = F.log_softmax(x, dim=1)
        per_class = -g * log_p * (1 - log_p.exp()) ** gamma
        if alpha is not None:
            per_class = per_class * _class_alpha(alpha, channels, x)
        total, count = (per_class * counted).sum(), counted.sum()
    else:
        p = torch.sigmoid(x)
        p_true = p * g + (1 - p) * (1 - g)
        per_value = F.binary_cross_entropy_with_logits(x, g, reduction="none") * (1 - p_true) ** gamma
        if alpha is not None:
            per_value = per_value * (alpha * g + (1 - alpha) * (1 - g))
        total, count = (per_value * counted).sum(), counted.sum() * channels
    return total / count.clamp_min(1)


def _counted_pixels(target: Tensor, channels: int, spec: DiceSpec) -> Tensor:
    """Pixels of the per-pixel term: not ignored and (for label maps) inside the label range."""
    if target.is_floating_point():
        return torch.ones_like(target[:, 0], dtype=torch.bool)
    low, high = label_range(channels)
    counted = (target >= low) & (target < high)
    return counted if spec.ignore_index is None else counted & (target != spec.ignore_index)


def _class_alpha(alpha: float, channels: int, like: Tensor) -> Tensor:
    weights = torch.full((channels,), alpha, dtype=like.dtype, device=like.device)
    weights[0] = 1 - alpha
    return weights.view(1, channels, *([1] * (like.ndim - 2)))


class _CompoundLoss(nn.Module):
    def __init__(self, impl: str, spec: Optional[DiceSpec], lambda_dice: float, lambda_pixel: float,
                 gamma: float, alpha: Optional[float], fields: dict) -> None:
        super().__init__()
        if lambda_dice < 0 or lambda_pixel < 0:
            raise ValueError(f"term weights must be >= 0, got {lambda_dice} and {lambda_pixel}")
        self.implementation = get_implementation(impl)
        self.spec = resolve_spec(spec, fields)
        if self.spec.activation == "none":
            raise ValueError("cross-entropy and focal terms need logits: use activation='softmax' or 'sigmoid'")
        self.lambda_dice, self.lambda_pixel, self.gamma, self.alpha = lambda_dice, lambda_pixel, gamma, alpha

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if self.implementation.name == "fused":  # both terms in the fused kernel's two passes, where it can
            fused = fused_compound_loss(logits, target, self.spec, lambda_dice=self.lambda_dice,
                                        lambda_pixel=self.lambda_pixel, gamma=self.gamma, alpha=self.alpha)
            if fused is not None:
                return fused
        logits, target = prepare_inputs(logits, target, self.spec, check_finite=True)
        dice = loss_from_statistics(self.implementation.statistics(logits, target, self.spec), self.spec)
        pixel = focal_loss(logits, target, self.spec, gamma=self.gamma, alpha=self.alpha)
        return self.lambda_dice * dice + self.lambda_pixel * pixel


class DiceCELoss(_CompoundLoss):
    """``lambda_dice * Dice + lambda_ce * cross-entropy`` (binary cross-entropy with sigmoid)."""

    def __init__(self, impl: str = "vectorized", spec: Optional[DiceSpec] = None, *, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, **fields) -> None:
        super().__init__(impl, spec, lambda_dice, lambda_ce, 0.0, None, fields)


class DiceFocalLoss(_CompoundLoss):
    """``lambda_dice * Dice + lambda_focal * focal(gamma, alpha)``."""

    def __init__(self, impl: str = "vectorized", spec: Optional[DiceSpec] = None, *, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0, gamma: float = 2.0, alpha: Optional[float] = None, **fields) -> None:
        super().__init__(impl, spec, lambda_dice, lambda_focal, gamma, alpha, fields)
