"""One-hot target plus broadcast sums over the spatial axes: what the peer libraries do.

``dense_statistics`` computes in the logits' dtype unless ``accumulate`` names a wider dtype for
the sums; ``mixed`` is the same formulation with float32 accumulation.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .checks import is_label_map
from .score import DiceStatistics
from .spec import DiceSpec


def activate(logits: Tensor, spec: DiceSpec) -> Tensor:
    if spec.activation == "softmax":
        return torch.softmax(logits, dim=1)
    if spec.activation == "sigmoid":
        return torch.sigmoid(logits)
    return logits


def one_hot_target(target: Tensor, channels: int, spec: DiceSpec, dtype: torch.dtype):
    """``(g, keep)``: the target as ``(N, C, *spatial)`` of ``dtype`` and the ``(N, 1, *spatial)``
    mask of counted pixels (``None`` when every pixel counts)."""
    if not is_label_map(target):
        return target.to(dtype), None
    keep = None if spec.ignore_index is None else (target != spec.ignore_index).unsqueeze(1)
    if channels == 1:
        g = (target == 1).unsqueeze(1)
    else:
        # A comparison one-hot is one byte per element (F.one_hot's is int64, 8x the size of a
        # float32 target, 4x a half one) and encodes labels outside [0, C) as all-zero.
        classes = torch.arange(channels, device=target.device).view(1, channels, *([1] * (target.ndim - 1)))
        g = target.unsqueeze(1) == classes
    return g.to(dtype), None if keep is None else keep.to(dtype)


def dense_statistics(
    logits: Tensor, target: Tensor, spec: DiceSpec, *, accumulate: Optional[torch.dtype] = None
) -> DiceStatistics:
    p = activate(logits, spec)
    g, keep = one_hot_target(target, logits.shape[1], spec, p.dtype)
    if keep is not None:
        p = p * keep
        g = g * keep
    axes = tuple(range(2, logits.ndim))
    power = 2 if spec.squared else 1
    sums = (
        torch.sum(p * g, axes, dtype=accumulate),
        torch.sum(p**power, axes, dtype=accumulate),
        torch.sum(g**power, axes, dtype=accumulate),
    )
    return DiceStatistics(*(s.float() if s.dtype in (torch.float16, torch.bfloat16) else s for s in sums))


def vectorized_statistics(logits: Tensor, target: Tensor, spec: DiceSpec) -> DiceStatistics:
    return dense_statistics(logits, target, spec)
