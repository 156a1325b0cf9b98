"""The autograd Function of ``fused``: per-image, per-class sums forward, analytic gradient backward.

Forward returns ``intersection = sum m p g``, ``pred_sum = sum m p**k`` and ``target_sum = sum m g**k``
(each ``(N, C)``); ``loss_from_statistics`` turns them into the loss with ordinary autograd, so every
``DiceSpec`` field works without the kernels knowing about it. Backward receives
``a = dL/dpred_sum`` and ``b = dL/dintersection`` (``target_sum`` does not depend on the logits) and
a backend writes ``dL/dlogits`` in one pass, without a one-hot::

    q_c      = a_c k p_c**(k-1) + b_c g_c                     (dL/dp_c)
    softmax: dlogit_c = p_c (q_c - sum_j p_j q_j),  sum_j p_j q_j = sum_j a_j k p_j**k + b_y p_y
    sigmoid: dlogit_c = p_c (1 - p_c) q_c;   none: dlogit_c = q_c;   all times the mask m.

Reference: F. Milletari et al., "V-Net", 3DV 2016 (the soft Dice and its gradient).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..checks import check_finite_logits
from ..spec import DiceSpec


class KernelParams(NamedTuple):
    """What the kernels need to know of the spec: the activation, k, the ignored label."""

    activation: int  # 0 softmax, 1 sigmoid, 2 identity
    squared: bool
    ignore_index: Optional[int]

    @classmethod
    def from_spec(cls, spec: DiceSpec) -> "KernelParams":
        return cls(("softmax", "sigmoid", "none").index(spec.activation), spec.squared, spec.ignore_index)


class Backend(NamedTuple):
    """A pair of kernels over ``logits (N, C, V)`` (contiguous) and ``labels (N, V)``.

    ``statistics(logits, labels, params, deterministic) -> (stats (3, N, C) float64, probe)``, with
    ``probe`` a scalar that is NaN or inf exactly when a logit is; ``gradient(logits, labels, a, b,
    params) -> dlogits`` with ``a``, ``b`` contiguous ``(N, C)`` float64, in the logits' dtype.
    """

    statistics: Callable
    gradient: Callable


def output_buffer(shape, device, dtype) -> Tensor:
    """Memory a kernel must overwrite entirely; tests replace this with NaN-filled buffers."""
    return torch.empty(shape, device=device, dtype=dtype)


class FusedStatistics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor, params: KernelParams, backend: Backend, deterministic: bool,
                shape: torch.Size):
        stats, probe = backend.statistics(logits, labels, params, deterministic)
        if not torch.isfinite(probe):
            check_finite_logits(logits.view(shape))  # raises the error that names the bad logit's index
        ctx.save_for_backward(logits, labels)
        ctx.params, ctx.backend = params, backend
        dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
        intersection, pred_sum, target_sum = (s.to(dtype, copy=True) for s in stats)
        ctx.mark_non_differentiable(target_sum)
        return intersection, pred_sum, target_sum

    @staticmethod
    def backward(ctx, grad_intersection: Optional[Tensor], grad_pred_sum: Optional[Tensor], _grad_target_sum):
        logits, labels = ctx.saved_tensors
        shape = (logits.shape[0], logits.shape[1])
        a, b = (
            torch.zeros(shape, dtype=torch.float64, device=logits.device) if g is None
            else g.to(torch.float64).contiguous()
            for g in (grad_pred_sum, grad_intersection)
        )
        return ctx.backend.gradient(logits, labels, a, b, ctx.params), None, None, None, None, None
