"""Soft Dice over the batch of every process: a global loss for data-parallel training.

With data parallelism each rank holds a slice of the batch. Batch Dice is not a mean of per-image
terms: it scores the per-class sums ``tp_c, P_c, G_c`` of the whole batch, so scoring each rank's
slice and averaging the losses is a different (and, with little foreground per rank, very
different) loss. Here each rank computes its own statistics, an all-reduce sums them, and every
rank scores the same global sums::

    S_c = sum over ranks r of s_{r,c}       (s = (tp, P, G) pooled over the rank's images)
    L   = loss_from_statistics(S, spec)      (the same value on every rank)

Gradient. ``L`` depends on rank ``r``'s logits only through ``s_r``, and ``dS/ds_r`` is the
identity, so ``dL/dx_r = dL/dS * ds_r/dx_r``: the backward of the all-reduce is the identity
(every rank holds the same upstream ``dL/dS``, so no communication is needed).
``torch.distributed.nn.functional.all_reduce`` instead all-reduces the upstream gradient, which
gives ``world_size * dL/dS``: the gradient of the sum of the ``world_size`` copies of ``L``.

DistributedDataParallel averages parameter gradients over ranks (divides their sum by the world
size). Summed over ranks, the per-rank gradients above give exactly the single-process gradient
``dL/dtheta``; DDP's average gives ``dL/dtheta / world_size``. To train exactly like one process
on the concatenated batch, scale the loss::

    loss = global_dice_loss(logits, target, spec) * torch.distributed.get_world_size()

(with Adam the scale matters little; with SGD it is the learning rate times ``world_size``).

Per-image Dice (``batch=False``): the ``mean`` is over all images of all ranks (the per-image
loss sum and the image count are both all-reduced). Ranks may hold different batch sizes,
including zero images. Without an initialised process group the loss is the single-process one.
docs/distributed.md has the details, the tests and the per-rank vs global measurements.

Reference: nnU-Net ``MemoryEfficientSoftDiceLoss(ddp=True)``, whose ``AllGatherGrad`` gives
``world_size`` times this gradient (cancelled by DDP's averaging) and needs equal batch sizes.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor

from .registry import get_implementation, resolve_spec
from .score import DiceStatistics, loss_from_statistics
from .spec import DiceSpec


class _SumAcrossRanks(torch.autograd.Function):
    """All-reduce SUM whose backward is the identity (see the module docstring for why).

    The values travel in float64: every rank sends the same dtype whatever its implementation
    returns, and the cross-rank sum adds no rounding of its own.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor, group) -> Tensor:
        total = tensor.to(torch.float64, memory_format=torch.contiguous_format, copy=True)
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=group)
        return total.to(tensor.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


def sum_across_ranks(tensor: Tensor, group=None) -> Tensor:
    """``tensor`` summed over the ranks of ``group``; its gradient w.r.t. this rank's ``tensor``
    is the identity (exact when the downstream loss is the same on every rank)."""
    return _SumAcrossRanks.apply(tensor, group)


def is_distributed(group=None) -> bool:
    """True when a process group is initialised; False for a plain single process.

    Raises when ``group`` is given, or ``WORLD_SIZE`` > 1 is set (a launcher such as torchrun
    started several processes), but ``torch.distributed`` is not initialised.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if group is not None:
        raise RuntimeError(
            "a process group was given but torch.distributed is not initialised; "
            "call torch.distributed.init_process_group(...) first"
        )
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise RuntimeError(
            f"WORLD_SIZE={world} is set but torch.distributed is not initialised; call "
            "torch.distributed.init_process_group(...) before global_dice_loss, or unset WORLD_SIZE"
        )
    return False


def global_statistics(stats: DiceStatistics, group=None) -> DiceStatistics:
    """The statistics pooled over this rank's images and summed over all ranks, shape ``(1, C)``.

    One all-reduce of a ``(3, C)`` tensor; gradients flow back to this rank's ``stats``.
    Without an initialised process group: ``stats.pooled()``.
    """
    pooled = torch.stack(stats.pooled())
    if is_distributed(group):
        pooled = sum_across_ranks(pooled, group)
    return DiceStatistics(*pooled.unbind(0))


def global_dice_loss(
    logits: Tensor,
    target: Tensor,
    spec: Optional[DiceSpec] = None,
    *,
    impl: str = "vectorized",
    group=None,
    validate: bool = True,
    **overrides,
) -> Tensor:
    """The soft Dice loss of the batch formed by every rank's ``logits`` and ``target``.

    With ``batch=True`` the per-class sums of all ranks are added before scoring, so the loss
    equals ``dice_loss`` of the concatenated batch on one process, and the backward gives each
    rank the exact gradient of that global loss w.r.t. its own logits. With ``batch=False`` the
    ``mean`` and ``sum`` reductions run over all images of all ranks; ``reduction="none"``
    returns this rank's per-image rows (nothing to reduce). Under DistributedDataParallel
    multiply the loss by ``torch.distributed.get_world_size(group)`` to undo DDP's gradient
    averaging (module docstring).

    Args:
        logits: this rank's ``(N_r, C, *spatial)`` scores; ``N_r`` may differ between ranks and
            may be 0.
        target: this rank's label map ``(N_r, *spatial)`` or float target ``(N_r, C, *spatial)``.
        spec: a ``DiceSpec`` (default ``DiceSpec()``); ``**overrides`` change its fields.
        impl: the implementation computing the statistics (``dice_impls.IMPLEMENTATIONS``).
        group: the process group (default: the world). Every rank of it must call this function.
        validate: as in ``dice_loss``: ``False`` skips the checks that read the data.

    Without an initialised process group this is ``dice_loss`` on the local batch.
    """
    spec = resolve_spec(spec, overrides)
    stats = get_implementation(impl).compute_statistics(logits, target, spec, validate=validate)
    if spec.batch:
        return loss_from_statistics(global_statistics(stats, group), spec)
    if not is_distributed(group) or spec.reduction == "none":
        return loss_from_statistics(stats, spec)
    if spec.reduction == "sum":
        return sum_across_ranks(loss_from_statistics(stats, spec), group)
    images = stats.intersection.shape[0]
    # An empty rank adds 0, but through its (empty) statistics, so autograd (and DDP's
    # gradient hooks) still reach its model.
    local_sum = loss_from_statistics(stats, spec) * images if images else stats.intersection.sum()
    count = torch.tensor(float(images), dtype=local_sum.dtype, device=local_sum.device)
    total_loss, total_images = sum_across_ranks(torch.stack((local_sum, count)), group)
    return total_loss / total_images
