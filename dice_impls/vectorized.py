"""One-hot target plus broadcast sums over the spatial axes: what the peer libraries do.

``dense_statistics`` computes in the logits' dtype unless ``accumulate`` names a wider dtype for
the sums; ``mixed`` is the same formulation with float32 accumulation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .checks import ignored_pixels, is_label_map
from .score import DiceStatistics
from .spec import DiceSpec


def activate(logits: Tensor, spec: DiceSpec) -> Tensor:
    if spec.activation == "softmax":
        return torch.softmax(logits, dim=1)
    if spec.activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def one_hot_target(target: Tensor, channels: int, spec: DiceSpec, dtype: torch.dtype):
    """``(g, keep)``: the target as ``(N, C, *spatial)`` of ``dtype`` and the boolean
    ``(N, 1, *spatial)`` mask of counted pixels (``None`` when every pixel counts)."""
    if not is_label_map(target):
        return target.to(dtype), None
    ignored = ignored_pixels(target, spec.ignore_index)
    keep = None if ignored is None else ~ignored.unsqueeze(1)
    if channels == 1:
        g = (target == 1).unsqueeze(1)
    else:
        # A comparison one-hot is one byte per element (F.one_hot's is int64, 8x the size of a
        # float32 target, 4x a half one) and encodes labels outside [0, C) as all-zero. Comparing
        # with an int64 tensor promotes the labels, so no class index wraps around in their dtype.
        classes = torch.arange(channels, device=target.device).view(1, channels, *([1] * (target.ndim - 1)))
        g = target.unsqueeze(1) == classes
    return g.to(dtype), keep


def uses_soft_overlap(target: Tensor, spec: DiceSpec) -> bool:
    """Whether ``tp`` is ``sum m min(p, g)`` (``soft_label``, float target, ``k = 1``) rather than
    ``sum m p g``; they agree on hard targets and always with ``k = 2`` (DiceSpec.soft_label)."""
    return spec.soft_label and not spec.squared and not is_label_map(target)


def dense_statistics(
    logits: Tensor, target: Tensor, spec: DiceSpec, *, accumulate: Optional[torch.dtype] = None
) -> DiceStatistics:
    p = activate(logits, spec)
    g, keep = one_hot_target(target, logits.shape[1], spec, p.dtype)
    if keep is not None:
        # where, not a product: the backward of a product by 0 is inf * 0 = NaN wherever the upstream
        # gradient overflows the logits' dtype (float16 with an all-ignored batch: 1 / smooth_dr).
        p = torch.where(keep, p, 0)
        g = torch.where(keep, g, 0)
    axes = tuple(range(2, logits.ndim))
    power = 2 if spec.squared else 1
    overlap = torch.minimum(p, g) if uses_soft_overlap(target, spec) else p * g
    sums = (
        torch.sum(overlap, axes, dtype=accumulate),
        torch.sum(p**power, axes, dtype=accumulate),
        torch.sum(g**power, axes, dtype=accumulate),
    )
    return DiceStatistics(*(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s for s in sums))


def vectorized_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    return dense_statistics(logits, target, spec)
