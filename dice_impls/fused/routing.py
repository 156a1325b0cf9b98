"""The one answer to "may this call fuse, and how?": every loss that can use the fused kernels
(``dice_loss(impl="fused")``, ``compound_loss`` and through it the compound losses and the drop-in
classes) asks ``fusion`` and takes the path it names.

The drop-in classes decide only whether the peer's loss *is* a ``DiceSpec`` plus a ``PixelTerm``
over the same logits (a mapping question: e.g. MONAI's ``other_act`` scores other values than its
cross-entropy reads); whether the kernels can compute it is decided here.
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from ..spec import DiceSpec
from . import ops
from .interface import PixelTerm

FOLDED = "folded"  # the C++ loss operator: sums, scoring, pixel term and gradient coefficients in one pass
TRITON = "triton"  # the Triton kernels' sums (with the pixel term), scored on the device by torch


def pixel_term_applies(channels: int, spec: DiceSpec, pixel: PixelTerm) -> bool:
    """Whether the kernels (C++ and Triton) compute this per-pixel term: softmax over two or more
    channels, a mean loss, label smoothing for cross-entropy only."""
    return (spec.activation == "softmax" and channels >= 2 and spec.reduction == "mean"
            and (pixel.label_smoothing == 0 or pixel.gamma == 0))


def fusion(logits: Tensor, target: Tensor, spec: DiceSpec, pixel: Optional[PixelTerm] = None,
           backend: Optional[str] = None) -> Optional[str]:
    """``FOLDED``, ``TRITON``, or None: no fused path for this call. Then Dice alone goes through
    the fused statistics and ``loss_from_statistics`` (chunked backend, empty batch), and a loss
    with a pixel term is left to the caller, which computes the term in torch.

    Every ``DiceSpec`` folds (the C++ operator scores the whole family, ``reduction="none"``
    included); what does not: float targets (the kernels read label maps), an empty batch (no unit
    to average: ``loss_from_statistics`` defines its loss, 0 on the graph), a pixel term the kernels
    do not compute (``pixel_term_applies``), and the chunked fallback.
    """
    if not (isinstance(logits, Tensor) and isinstance(target, Tensor)) or logits.ndim < 3:
        return None  # the caller's own path names the problem
    if target.is_floating_point() or logits.shape[0] == 0:
        return None
    if pixel is not None and not pixel_term_applies(logits.shape[1], spec, pixel):
        return None
    if backend in (None, "cpp") and logits.device.type == "cpu" and ops.cpp() is not None:
        return FOLDED
    if backend == "triton" or (backend is None and logits.device.type == "cuda"):
        return TRITON
    return None
