"""Dice + cross-entropy / focal in the fused kernels' two passes (``compound_loss``): the folded
C++ operator on the CPU, the Triton kernels' sums scored by torch on the GPU (``routing.fusion``)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..checks import check_class_weight, check_focal_parameters, check_label_smoothing
from ..score import DiceStatistics, loss_from_statistics
from ..spec import DiceSpec
from . import ops
from .interface import KernelParams, PixelTerm
from .loss import folded_loss, label_codes, prepare, validate_on_host
from .routing import FOLDED, fusion


def compound_loss(logits: Tensor, target: Tensor, spec: DiceSpec, *, lambda_dice: float, lambda_pixel: float,
                  gamma: float = 0.0, alpha: Optional[float] = None, class_weight: Optional[Sequence[float]] = None,
                  normalize_by_weight: bool = True, label_smoothing: float = 0.0,
                  validate: bool = True, backend: Optional[str] = None,
                  deterministic: Optional[bool] = None) -> Optional[Tensor]:
    """``lambda_dice * Dice + lambda_pixel * focal(gamma, alpha)`` (cross-entropy at gamma = 0) in
    the fused kernels' two passes, or None where they cannot (``routing.fusion``; the caller then
    adds the term in torch: sigmoid, one channel, a reduction other than "mean", smoothing with
    focal, float targets, the chunked backend). On the CPU the C++ ``loss`` operator does it all;
    the Triton kernels (CUDA, or ``backend="triton"``) return the term's sums with the Dice sums, and
    the loss is scored from them in torch.

    The pixel term is ``sum_i u_y (1 - p_y)**gamma nll_i / sum_i d_y`` over the counted pixels:
    ``u = class_weight`` times, with ``alpha``, ``1 - alpha`` for class 0 and ``alpha`` for the
    others; ``d = class_weight`` when ``normalize_by_weight`` (``F.cross_entropy``'s mean) else 1
    (a mean over the counted pixels, as ``compound.focal_loss``); ``label_smoothing`` as in
    ``F.cross_entropy`` (cross-entropy only)."""
    check_focal_parameters(gamma, alpha)
    check_label_smoothing(label_smoothing)
    path = fusion(logits, target, spec, PixelTerm(lambda_pixel, gamma, label_smoothing=label_smoothing), backend)
    if path is None:
        return None
    logits, target = prepare(logits, target, spec, validate)
    channels = logits.shape[1]
    check_class_weight(class_weight, channels)
    weights = None if class_weight is None else tuple(float(w) for w in class_weight)
    numerator = weights
    if alpha is not None:
        numerator = tuple((1 - alpha if c == 0 else alpha) * (1.0 if weights is None else weights[c])
                          for c in range(channels))
    pixel = PixelTerm(lambda_pixel, gamma, numerator, weights if normalize_by_weight else None, label_smoothing)
    if path == FOLDED:
        return folded_loss(logits, target, spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel)
    return _triton_compound_loss(logits, target, spec, lambda_dice, pixel, validate, deterministic)


# Class weights on the device, made once per (weights, device): creating them from Python floats on
# every call is a host-to-device copy from pageable memory, which waits for the stream. A plain
# dict, not functools.lru_cache, which Dynamo warns about when it traces a call.
_DEVICE_WEIGHTS: dict = {}


def _device_weights(values: Sequence[float], device: torch.device) -> Tensor:
    key = (tuple(float(v) for v in values), str(device))
    if key not in _DEVICE_WEIGHTS:
        _DEVICE_WEIGHTS[key] = torch.tensor(key[0], dtype=torch.float64, device=device)
    return _DEVICE_WEIGHTS[key]


def _triton_compound_loss(logits: Tensor, target: Tensor, spec: DiceSpec, lambda_dice: float, pixel: PixelTerm,
                          validate: bool, deterministic: Optional[bool]) -> Tensor:
    """Dice + the pixel term from the Triton statistics (rows 3, 4: the term by class, the
    label-smoothing sum), scored as the C++ operator scores them; autograd carries the upstream
    gradients of those rows to the gradient kernel."""
    operators = ops.triton()
    x = logits.contiguous()
    labels = label_codes(target).contiguous()
    channels, eps = x.shape[1], float(pixel.label_smoothing)
    numerator, normalizer = (None if w is None else _device_weights(w, x.device)
                             for w in (pixel.numerator_weight, pixel.normalizer_weight))
    smoothing_weight = None
    if eps:
        smoothing_weight = numerator if numerator is not None else _device_weights([1.0] * channels, x.device)
    if deterministic is None:
        deterministic = torch.are_deterministic_algorithms_enabled()
    stats, probe = operators.compound_statistics(x, labels, *KernelParams.from_spec(spec), deterministic,
                                              float(pixel.gamma), smoothing_weight,
                                              float(sum(pixel.numerator_weight or [1.0] * channels)))
    if validate:
        validate_on_host(x, labels, probe, spec)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    dice = loss_from_statistics(DiceStatistics(*stats[:3].to(dtype).unbind(0)), spec)
    # Classes without a counted pixel leave the sums whatever their weight (a NaN weight too, as in
    # F.cross_entropy); a normaliser of 0 gives a term of 0, any other F.cross_entropy's weighted mean.
    present = stats[2] != 0
    weighted = lambda sums, w: sums.sum() if w is None else torch.where(present, sums * w, 0).sum()  # noqa: E731
    term_sum = weighted(stats[3], numerator) * (1 - eps) + eps / channels * stats[4, :, 0].sum()
    norm = weighted(stats[2], normalizer)
    term = torch.where(norm != 0, term_sum / torch.where(norm != 0, norm, 1.0), 0.0)
    return lambda_dice * dice + (pixel.weight * term).to(dtype)
