"""The autograd formulas of ``fused``'s operators and their fake kernels (registered by ``ops``).

Statistics return ``intersection = sum m p g``, ``pred_sum = sum m p**k`` and
``target_sum = sum m g**k`` (stacked, ``(3, N, C)`` float64); ``loss_from_statistics`` turns them
into the loss with ordinary autograd, so every ``DiceSpec`` field works without the kernels
knowing about it. The backward receives ``a = dL/dpred_sum`` and ``b = dL/dintersection``
(``target_sum`` does not depend on the logits) and a kernel writes ``dL/dlogits`` in one pass,
without a one-hot::

    q_c      = a_c k p_c**(k-1) + b_c g_c                     (dL/dp_c)
    softmax: dlogit_c = p_c (q_c - sum_j p_j q_j),  sum_j p_j q_j = sum_j a_j k p_j**k + b_y p_y
    sigmoid: dlogit_c = p_c (1 - p_c) q_c;   none: dlogit_c = q_c;   all times the mask m.

The folded ``loss`` op (C++) also scores the sums itself and keeps ``a``, ``b`` for a unit
upstream gradient, and the labels as one-byte codes (ignored, no class, or 2 + the class) that the
backward reads instead of the labels; its per-pixel term (cross-entropy, focal) adds
``k (p_c - [y = c]) h u_y`` per logit (``fused_kernels.h``). Its formula is registered here for
``torch.compile``; eager mode calls ``eager_loss``, the same two operators joined by a C++
autograd node (``folded_autograd.cpp``). The gradient ops are not differentiable again: double
backward raises (``refuse_double_backward``).

Reference: F. Milletari et al., "V-Net", 3DV 2016 (the soft Dice and its gradient).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor

from .interface import FoldedLossArgs, KernelParams  # noqa: F401 (KernelParams: also imported from here)

DOUBLE_BACKWARD = (
    "impl='fused' has no double backward (create_graph=True through its gradient, gradgradcheck, "
    "gradient penalties); use impl='vectorized' for second-order gradients"
)


# --- fake (shape-only) kernels -------------------------------------------------------------------

def statistics_fake(logits: Tensor, labels: Tensor, *args):
    n, c = logits.shape[:2]
    return logits.new_empty((3, n, c), dtype=torch.float64), logits.new_empty((), dtype=torch.float64)


def gradient_fake(logits: Tensor, labels: Tensor, a: Tensor, b: Tensor, *args) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def compound_statistics_fake(logits: Tensor, labels: Tensor, *args):
    n, c = logits.shape[:2]
    return logits.new_empty((5, n, c), dtype=torch.float64), logits.new_empty((), dtype=torch.float64)


# Label codes (one byte a pixel, for the backward pass) for at most this many classes (fused_args.h).
MAX_CODED_CLASSES = 253


def loss_fake(logits: Tensor, labels: Tensor, *args):
    n, c = logits.shape[:2]
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    voxels = labels.numel() // n if n else 0
    coded = c <= MAX_CODED_CLASSES and labels.element_size() > 1  # as fused_ops.cpp decides
    codes = labels.new_empty((n if coded else 0, voxels), dtype=torch.uint8)
    loss = logits.new_empty(FoldedLossArgs.from_op_args(args).loss_shape(n, c), dtype=dtype)
    return loss, logits.new_empty((2 * n * c + 1,), dtype=torch.float64), codes


def loss_backward_fake(grad: Tensor, logits: Tensor, *args) -> Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


# --- autograd formulas ---------------------------------------------------------------------------

def statistics_autograd(gradient_op: Callable):
    """``(setup_context, backward)`` of a statistics op whose backward is ``gradient_op``.

    Inputs: ``(logits, labels, activation, squared, ignore_index, *flags)``.
    """

    def setup_context(ctx, inputs, output):
        logits, labels, activation, squared, ignore_index = inputs[:5]
        ctx.save_for_backward(logits, labels)
        ctx.kernel_args = (activation, squared, ignore_index)
        ctx.flags = len(inputs) - 5
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_stats: Optional[Tensor], _grad_probe):
        logits, labels = ctx.saved_tensors
        n, c = logits.shape[:2]
        if grad_stats is None:
            grad_stats = logits.new_zeros((3, n, c), dtype=torch.float64)
        grad_stats = grad_stats.to(torch.float64)
        grad = gradient_op(logits, labels, grad_stats[1].contiguous(), grad_stats[0].contiguous(), *ctx.kernel_args)
        return (grad, None, None, None, None) + (None,) * ctx.flags

    return setup_context, backward


def compound_statistics_autograd(gradient_op: Callable):
    """``(setup_context, backward)`` of the statistics op with the per-pixel term (rows 3, 4: the
    term by class, the label-smoothing sum in column 0); inputs ``(logits, labels, activation,
    squared, ignore_index, deterministic, gamma, smoothing_weight, weight_sum)``."""

    def setup_context(ctx, inputs, output):
        logits, labels, activation, squared, ignore_index, _deterministic, gamma, smoothing_weight, weight_sum = inputs
        ctx.save_for_backward(logits, labels, smoothing_weight)
        ctx.kernel_args = (activation, squared, ignore_index, gamma)
        ctx.weight_sum = weight_sum
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_stats: Optional[Tensor], _grad_probe):
        logits, labels, smoothing_weight = ctx.saved_tensors
        n, c = logits.shape[:2]
        if grad_stats is None:
            grad_stats = logits.new_zeros((5, n, c), dtype=torch.float64)
        g = grad_stats.to(torch.float64)
        grad = gradient_op(logits, labels, g[1].contiguous(), g[0].contiguous(), g[3].contiguous(),
                           g[4, :, 0].contiguous(), *ctx.kernel_args, smoothing_weight, ctx.weight_sum)
        return (grad,) + (None,) * 8

    return setup_context, backward


def loss_setup_context(ctx, inputs, output):
    logits, labels = inputs[:2]
    ctx.save_for_backward(logits, labels, output[1], output[2])
    ctx.config = inputs[2:]
    ctx.mark_non_differentiable(output[1], output[2])


def loss_backward(ctx, grad_loss: Tensor, _grad_saved, _grad_codes):
    logits, labels, saved, codes = ctx.saved_tensors
    grad = torch.ops.dice_fused.loss_backward(grad_loss, logits, labels, saved, codes,
                                              *FoldedLossArgs.from_op_args(ctx.config).backward_op_args())
    return (grad,) + (None,) * (1 + len(ctx.config))


def refuse_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD)


def no_context(ctx, inputs, output):
    pass
