"""``fused``: one-hot-free Dice statistics with an analytic gradient, C++ on CPU, Triton on GPU.

Importing this package registers ``IMPLEMENTATIONS["fused"]``. The kernels are ``torch.library``
operators (``ops``), so ``torch.compile(fullgraph=True)`` sees them without a graph break. On
the CPU, ``dice_loss(..., impl="fused")`` runs one folded operator forward (the sums, their
scoring and the coefficients of the gradient) and one backward, whenever the spec's scoring is
one the C++ code knows (``foldable``); otherwise the sums go through ``loss_from_statistics``.
``compound_loss`` adds cross-entropy or focal terms inside the same two passes.

``fused_statistics`` also takes an explicit ``backend`` (``"cpp"``, ``"chunked"``, ``"triton"``;
the Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``) and ``deterministic``
(fixed-order reduction instead of atomics on GPU; default:
``torch.are_deterministic_algorithms_enabled()``).
"""

from __future__ import annotations

import dataclasses
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

# Read without a copy; other integer dtypes (uint16/32/64) are converted to int64 once
# (``checks.comparable_labels``; validation has usually done it already).
NATIVE_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
BACKENDS = tuple(ops.FAMILIES)
# The DiceSpec fields the C++ scoring implements; any other field must keep its default to fold.
FOLDED_FIELDS = {
    "activation", "smooth_nr", "smooth_dr", "beta", "squared", "batch", "include_background", "ignore_index",
    "weight", "reduction", "log_loss", "average", "min_denominator", "absent_classes", "negate", "out_of_range",
    "resize_logits",
}
ABSENT_CLASSES = ("include", "zero", "exclude")


def label_codes(target: Tensor) -> Tensor:
    if target.dtype == torch.bool:
        return target.view(torch.uint8)
    return target if target.dtype in NATIVE_LABEL_DTYPES else comparable_labels(target)


def _kernel_args(spec: DiceSpec, validate: bool):
    params = KernelParams.from_spec(spec)
    return (*params, validate, validate and spec.out_of_range == "error")


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
        stats, _ = family.statistics(x, labels, *_kernel_args(spec, validate))
    else:
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        stats, probe = family.statistics(x, labels, *KernelParams.from_spec(spec), deterministic)
        if validate:
            _validate_on_host(x, labels, probe, spec)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return DiceStatistics(*stats.to(dtype).unbind(0))


def foldable(spec: DiceSpec) -> bool:
    """Whether the C++ ``loss`` operator implements this spec's scoring (else: ``loss_from_statistics``)."""
    return spec.reduction != "none" and all(
        getattr(spec, field.name) == field.default for field in dataclasses.fields(spec) if field.name not in FOLDED_FIELDS
    )


@dataclass(frozen=True)
class PixelTerm:
    """A per-pixel term of the loss: ``weight * sum_i u_{y_i} (1 - p_{y_i})**gamma (-log p_{y_i})
    / sum_i d_{y_i}`` over the counted pixels (not ignored, label in range); ``u``, ``d``: per-class
    weights (None: ones); ``label_smoothing`` mixes in ``eps/C sum_c u_c (-log p_c)``
    (cross-entropy only), as ``F.cross_entropy`` does."""

    weight: float = 1.0
    gamma: float = 0.0
    numerator_weight: Optional[Sequence[float]] = None
    normalizer_weight: Optional[Sequence[float]] = None
    label_smoothing: float = 0.0


def _loss_config(spec: DiceSpec, lambda_dice: float, pixel: Optional[PixelTerm]):
    flags = [int(spec.batch), int(spec.include_background), int(spec.average == "micro"), int(spec.log_loss),
             int(spec.negate), ABSENT_CLASSES.index(spec.absent_classes), int(spec.reduction == "mean")]
    pixel = pixel or PixelTerm(weight=0.0)
    scalars = [float(spec.beta), float(spec.smooth_nr), float(spec.smooth_dr), float(spec.min_denominator),
               float(lambda_dice), float(pixel.weight), float(pixel.gamma), float(pixel.label_smoothing)]
    as_list = lambda values: None if values is None else [float(v) for v in values]  # noqa: E731
    return flags, scalars, as_list(spec.weight), as_list(pixel.numerator_weight), as_list(pixel.normalizer_weight)


def folded_loss(logits: Tensor, labels: Tensor, spec: DiceSpec, *, validate: bool = True, lambda_dice: float = 1.0,
                pixel: Optional[PixelTerm] = None) -> Tensor:
    """``lambda_dice * Dice (+ the pixel term)`` by the C++ ``loss`` operator (CPU, foldable specs)."""
    x = logits.contiguous()
    codes = label_codes(labels).contiguous()
    config = (*_kernel_args(spec, validate), *_loss_config(spec, lambda_dice, pixel))
    if torch.compiler.is_compiling():  # the operator whose autograd formula the compiler traces
        return torch.ops.dice_fused.loss(x, codes, *config)[0]
    return torch.ops.dice_fused.eager_loss(x, codes, *config)


def pixel_term_applies(logits: Tensor, spec: DiceSpec, pixel: PixelTerm) -> bool:
    """Whether the kernels (C++ and Triton) compute this per-pixel term: softmax over two or more
    channels, label smoothing for cross-entropy only."""
    return spec.activation == "softmax" and logits.shape[1] >= 2 and (pixel.label_smoothing == 0 or pixel.gamma == 0)


def can_fold(logits: Tensor, spec: DiceSpec, pixel: Optional[PixelTerm] = None) -> bool:
    # An empty batch has no unit to average: loss_from_statistics defines its loss (0, on the graph).
    if logits.device.type != "cpu" or logits.shape[0] == 0 or not foldable(spec) or ops.cpp() is None:
        return False
    return pixel is None or pixel_term_applies(logits, spec, pixel)


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
    the fused kernels' two passes, or None where they cannot (the caller then adds the term in
    torch: sigmoid, one channel, a reduction other than "mean", smoothing with focal, the chunked
    backend). On the CPU the C++ ``loss`` operator does it all (for the specs it scores, ``foldable``);
    the Triton kernels (CUDA, or ``backend="triton"``) return the term's sums with the Dice sums, and
    the loss is scored from them in torch.

    The pixel term is ``sum_i u_y (1 - p_y)**gamma nll_i / sum_i d_y`` over the counted pixels:
    ``u = class_weight`` times, with ``alpha``, ``1 - alpha`` for class 0 and ``alpha`` for the
    others; ``d = class_weight`` when ``normalize_by_weight`` (``F.cross_entropy``'s mean) else 1
    (a mean over the counted pixels, as ``compound.focal_loss``); ``label_smoothing`` as in
    ``F.cross_entropy`` (cross-entropy only)."""
    check_focal_parameters(gamma, alpha)
    check_label_smoothing(label_smoothing)
    logits, target = prepare(logits, target, spec, validate)
    channels = logits.shape[1]
    check_class_weight(class_weight, channels)
    weights = None if class_weight is None else [float(w) for w in class_weight]
    numerator = weights
    if alpha is not None:
        numerator = [(1 - alpha if c == 0 else alpha) * (1.0 if weights is None else weights[c]) for c in range(channels)]
    if spec.reduction != "mean":
        return None
    pixel = PixelTerm(lambda_pixel, gamma, numerator, weights if normalize_by_weight else None, label_smoothing)
    if backend in (None, "cpp") and can_fold(logits, spec, pixel):
        return folded_loss(logits, target, spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel)
    on_triton = backend == "triton" or (backend is None and logits.device.type == "cuda")
    if on_triton and pixel_term_applies(logits, spec, pixel):
        return _triton_compound_loss(logits, target, spec, lambda_dice, pixel, validate, deterministic)
    return None


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
        if can_fold(logits, spec):
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

__all__ = ["Backend", "BACKENDS", "KernelParams", "PixelTerm", "compound_loss", "fused_statistics", "folded_loss"]
