"""``fused``: one-hot-free Dice statistics with an analytic gradient, C++ on CPU, Triton on GPU.

Importing this package registers ``IMPLEMENTATIONS["fused"]``. The kernels are ``torch.library``
operators (``ops``), so ``torch.compile(fullgraph=True)`` sees them without a graph break. On
the CPU, ``dice_loss(..., impl="fused")`` runs one folded operator forward (the sums, their
scoring for every ``DiceSpec``, and the coefficients of the gradient) and one backward; on the GPU
the Triton sums go through ``loss_from_statistics``. ``routing.fusion`` decides which, for every
caller. ``compound_loss`` adds cross-entropy or focal terms inside the same two passes; its
arguments to the C++ operator are named in ``op_args.FoldedLossArgs``.

``fused_statistics`` also takes an explicit ``backend`` (``"cpp"``, ``"chunked"``, ``"triton"``;
the Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``) and ``deterministic``
(fixed-order reduction instead of atomics on GPU; default:
``torch.are_deterministic_algorithms_enabled()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..checks import (check_class_weight, check_finite_logits, check_focal_parameters, check_label_range,
                      check_label_smoothing, comparable_labels, label_range_flag, prepare_inputs)
from ..registry import Implementation, register
from ..score import DiceStatistics, loss_from_statistics
from ..spec import DiceSpec
from . import cpu, ops
from .autograd import Backend, KernelParams
from .op_args import FoldedLossArgs, PixelTerm
from .routing import FOLDED, TRITON, fusion

# Read without a copy; other integer dtypes (uint16/32/64) are converted to int64 once
# (``checks.comparable_labels``; validation has usually done it already).
NATIVE_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
BACKENDS = tuple(ops.FAMILIES)


def label_codes(target: Tensor) -> Tensor:
    if target.dtype == torch.bool:
        return target.view(torch.uint8)
    return target if target.dtype in NATIVE_LABEL_DTYPES else comparable_labels(target)


def _validate_on_host(logits: Tensor, labels: Tensor, probe: Tensor, spec: DiceSpec) -> None:
    """The checks of kernels that do not validate themselves, with one host sync. Labels of every
    dtype are range-checked (uint8 too: 255 is no class unless it is ``ignore_index``)."""
    label_flag = label_range_flag(labels, logits.shape[1], spec)
    values = [probe.float()] + ([] if label_flag is None else [label_flag.float()])
    probe_value, *labels_ok = torch.stack(values).tolist()
    if probe_value != probe_value or abs(probe_value) == float("inf"):
        check_finite_logits(logits)
    if labels_ok and not labels_ok[0]:
        check_label_range(labels, logits.shape[1], spec)


def fused_statistics(
    logits: Tensor, target: Tensor, spec: DiceSpec, *, backend: Optional[str] = None,
    deterministic: Optional[bool] = None, validate: bool = True,
) -> DiceStatistics:
    """Per-image, per-class Dice sums ``(N, C)`` of shape-checked inputs, with the analytic backward.

    Takes integer label maps ``(N, *spatial)`` only; non-contiguous logits or labels are made
    contiguous first (one copy). ``validate``: refuse NaN/inf logits and out-of-range labels
    (inside the C++ kernel's pass; one host sync for Triton).
    """
    family = ops.family(backend, logits.device)
    x = logits.contiguous()
    labels = label_codes(target).contiguous()
    if family.validates:
        stats, _ = family.statistics(x, labels, *KernelParams.from_spec(spec), validate,
                                     validate and spec.out_of_range == "error")
    else:
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        stats, probe = family.statistics(x, labels, *KernelParams.from_spec(spec), deterministic)
        if validate:
            _validate_on_host(x, labels, probe, spec)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return DiceStatistics(*stats.to(dtype).unbind(0))


def folded_loss(logits: Tensor, labels: Tensor, spec: DiceSpec, *, validate: bool = True, lambda_dice: float = 1.0,
                pixel: Optional[PixelTerm] = None) -> Tensor:
    """``lambda_dice * Dice (+ the pixel term)`` by the C++ ``loss`` operator (``routing.FOLDED``)."""
    x = logits.contiguous()
    codes = label_codes(labels).contiguous()
    args = FoldedLossArgs.from_spec(spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel).to_op_args()
    if torch.compiler.is_compiling():  # the operator whose autograd formula the compiler traces
        return torch.ops.dice_fused.loss(x, codes, *args)[0]
    return torch.ops.dice_fused.eager_loss(x, codes, *args)


def prepare(logits: Tensor, target: Tensor, spec: DiceSpec, validate: bool):
    """Shape checks in Python; value checks happen in the kernels (``validate``). A float target is
    refused, after the checks of its values (their errors say more)."""
    float_target = isinstance(target, Tensor) and target.is_floating_point()
    logits, target = prepare_inputs(logits, target, spec, check_finite=False, validate=float_target and validate)
    if float_target:
        raise TypeError("impl='fused' takes integer label maps only; for float one-hot or soft targets "
                        "use impl='vectorized'")
    return logits, target


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
    family = ops.triton()
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
    stats, probe = family.compound_statistics(x, labels, *KernelParams.from_spec(spec), deterministic,
                                              float(pixel.gamma), smoothing_weight,
                                              float(sum(pixel.numerator_weight or [1.0] * channels)))
    if validate:
        _validate_on_host(x, labels, probe, spec)
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


@dataclass(frozen=True)
class FusedImplementation(Implementation):
    """``fused``: value checks inside the kernels, and the folded loss operator where it applies."""

    def __call__(self, logits: Tensor, target: Tensor, spec: Optional[DiceSpec] = None, validate: bool = True) -> Tensor:
        spec = spec or DiceSpec()
        logits, target = prepare(logits, target, spec, validate)
        if fusion(logits, target, spec) == FOLDED:
            return folded_loss(logits, target, spec, validate=validate)
        return loss_from_statistics(fused_statistics(logits, target, spec, validate=validate), spec)

    def compute_statistics(self, logits: Tensor, target: Tensor, spec: DiceSpec, validate: bool = True) -> DiceStatistics:
        logits, target = prepare(logits, target, spec, validate)
        return fused_statistics(logits, target, spec, validate=validate)


if cpu.built_library() is not None:
    ops.cpp()  # the built extension loads in milliseconds; doing it now keeps it out of compiled code

register(
    FusedImplementation(
        "fused",
        fused_statistics,
        "one-hot-free sums and analytic gradient: vectorised C++ on CPU (one folded op), Triton on GPU",
        checks_finite=True,
        label_maps_only=True,
    )
)

__all__ = ["Backend", "BACKENDS", "FoldedLossArgs", "KernelParams", "PixelTerm", "compound_loss", "fused_statistics",
           "folded_loss", "fusion"]
