"""Shared test helpers: seeded random inputs, the error measure, and the per-dtype tolerances.

Errors are normalised so one number fits every shape and option:
``error(actual, expected) = max|actual - expected| / max(max|expected|, floor)``, with floor 1
for losses (absolute below 1, relative above) and, for gradients, the smallest normal number of
the logits' dtype: a gradient the dtype can only hold as a subnormal (fp16 below 6.1e-5, e.g. the
1e-8 gradients of an absent class) is judged in absolute terms against that dtype's resolution.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import dice_impls

TARGET_KINDS = ("labels", "labels_keepdim", "onehot", "soft")
HALF_DTYPES = (torch.bfloat16, torch.float16)


def random_inputs(
    shape: Sequence[int],
    channels: int,
    dtype: torch.dtype = torch.float32,
    target_kind: str = "labels",
    seed: int = 0,
    *,
    label_dtype: torch.dtype = torch.int64,
    ignore_index: Optional[int] = None,
    ignore_fraction: float = 0.25,
    empty_classes: Sequence[int] = (),
    out_of_range_fraction: float = 0.0,
    logit_scale: float = 2.0,
    probabilities: bool = False,
    target_dtype: torch.dtype = torch.float32,
) -> Tuple[Tensor, Tensor]:
    """Seeded ``(logits, target)`` for a target label map of shape ``shape = (N, *spatial)``.

    Args:
        shape: ``(N, *spatial)``; logits are ``(N, channels, *spatial)`` of ``dtype``.
        channels: C. With C = 1 the labels are binary ``{0, 1}``.
        target_kind: ``"labels"`` ``(N, *spatial)`` of ``label_dtype``; ``"labels_keepdim"``
            ``(N, 1, *spatial)``; ``"onehot"`` float ``(N, C, *spatial)``; ``"soft"`` float
            ``(N, C, *spatial)`` with random values in [0, 1] (a distribution over classes when
            C > 1).
        ignore_index: when given, about ``ignore_fraction`` of the pixels get this label
            (label maps only).
        empty_classes: classes that appear nowhere in the target (zero channels for float targets).
        out_of_range_fraction: fraction of pixels labelled C (C = 1: 2), outside the valid range.
        probabilities: return probabilities (softmax over C, sigmoid for C = 1) instead of logits,
            for ``activation="none"``.
    """
    if target_kind not in TARGET_KINDS:
        raise ValueError(f"target_kind must be one of {TARGET_KINDS}, got {target_kind!r}")
    gen = torch.Generator().manual_seed(seed)
    images, *spatial = shape
    logits = torch.randn((images, channels, *spatial), generator=gen, dtype=torch.float64) * logit_scale
    if probabilities:
        logits = torch.sigmoid(logits) if channels == 1 else torch.softmax(logits, 1)
    logits = logits.to(dtype)

    classes = [c for c in range(2 if channels == 1 else channels) if c not in empty_classes]
    labels = torch.tensor(classes)[torch.randint(len(classes), tuple(shape), generator=gen)]
    if target_kind in ("onehot", "soft"):
        if ignore_index is not None or out_of_range_fraction:
            raise ValueError("ignore_index and out-of-range labels apply to label maps only")
        return logits, _float_target(labels, channels, target_kind, empty_classes, gen).to(target_dtype)

    if out_of_range_fraction:
        outside = torch.rand(tuple(shape), generator=gen) < out_of_range_fraction
        labels = torch.where(outside, 2 if channels == 1 else channels, labels)
    if ignore_index is not None:
        ignored = torch.rand(tuple(shape), generator=gen) < ignore_fraction
        labels = torch.where(ignored, ignore_index, labels)
    labels = labels.to(label_dtype)
    return logits, labels.unsqueeze(1) if target_kind == "labels_keepdim" else labels


def _float_target(labels: Tensor, channels: int, kind: str, empty_classes: Sequence[int], gen) -> Tensor:
    if channels == 1:
        target = (labels == 1).unsqueeze(1).double()
        if kind == "soft":
            target = torch.rand(target.shape, generator=gen, dtype=torch.float64) * (0 if 1 in empty_classes else 1)
        return target
    if kind == "onehot":
        return torch.nn.functional.one_hot(labels, channels).movedim(-1, 1).double()
    scores = torch.randn((labels.shape[0], channels, *labels.shape[1:]), generator=gen, dtype=torch.float64)
    scores[:, list(empty_classes)] = -torch.inf
    return torch.softmax(scores, 1)


def error(actual: Tensor, expected: Tensor, floor: float) -> float:
    """``max|actual - expected| / max(max|expected|, floor)`` in float64; inf if ``actual`` is not finite."""
    actual, expected = actual.detach().double(), expected.detach().double()
    if actual.shape != expected.shape:
        raise AssertionError(f"shape {tuple(actual.shape)} differs from the reference's {tuple(expected.shape)}")
    if not torch.isfinite(actual).all():
        return float("inf")
    scale = max(float(expected.abs().max()) if expected.numel() else 0.0, floor)
    return float((actual - expected).abs().max()) / scale if actual.numel() else 0.0


class Errors(NamedTuple):
    loss: float
    grad: float


def soft_label_ties(logits: Tensor, target: Tensor, spec: dice_impls.DiceSpec) -> Optional[Tensor]:
    """Pixels ``(N, 1, *spatial)`` where the soft-label overlap's gradient is decided by rounding.

    With ``soft_label`` on a float target (``k = 1``), ``tp = sum min(p, g)`` has the gradient
    ``1[p < g]``, a step at ``p = g``. Half-precision implementations compute ``p`` in bf16/fp16
    (``mixed`` too: half-size intermediates), so where ``|p - g|`` is within a few units of that
    dtype's rounding the step falls on either side, and the gradient of the whole pixel flips
    (measured: bfloat16 gradient error 0.49 of the largest gradient, against 1.4e-3 in float16).
    Returns the pixels within 8 epsilons (relative) of a tie, or None when no such step exists
    or the logits are float32/float64.
    """
    if not (spec.soft_label and not spec.squared and target.is_floating_point()) or logits.dtype not in HALF_DTYPES:
        return None
    x = logits.double()
    p = {"softmax": lambda: torch.softmax(x, 1), "sigmoid": lambda: torch.sigmoid(x), "none": lambda: x}[spec.activation]()
    g = target.double()
    margin = 8 * torch.finfo(logits.dtype).eps * torch.maximum(p, g)
    return ((p - g).abs() <= margin).any(1, keepdim=True)


def errors_against_reference(impl: str, logits: Tensor, target: Tensor, spec: dice_impls.DiceSpec) -> Errors:
    """Loss and gradient errors of ``impl`` against the float64 reference on the same inputs.

    The reference sees the logits converted exactly to float64, so the error is the
    implementation's own rounding, not the rounding of its input. The gradient must come back in
    the logits' dtype. Pixels at a soft-label tie (``soft_label_ties``) are left out of the
    gradient error; at most a fifth of the pixels may be.
    """
    x = logits.detach().clone().requires_grad_()
    loss = dice_impls.dice_loss(x, target, spec, impl=impl)
    x_ref = logits.detach().double().requires_grad_()
    expected = dice_impls.dice_loss(x_ref, target, spec, impl="reference")
    (grad,) = torch.autograd.grad(loss.sum(), x)
    (grad_ref,) = torch.autograd.grad(expected.sum(), x_ref)
    if grad.dtype != logits.dtype:
        raise AssertionError(f"{impl} returned a {grad.dtype} gradient for {logits.dtype} logits")
    ties = soft_label_ties(logits, target, spec)
    if ties is not None:
        if ties.double().mean() > 0.2:
            raise AssertionError(f"{float(ties.double().mean()):.0%} of the pixels are soft-label ties: too few compared")
        grad, grad_ref = (torch.where(ties, 0.0, g.double()) for g in (grad, grad_ref))
    return Errors(error(loss, expected, 1.0), error(grad, grad_ref, torch.finfo(logits.dtype).tiny))


class Tolerance(NamedTuple):
    loss: float
    grad: float


# Tolerances: 3x to 8x the worst error measured (error() above) over the cases of
# test_implementations.py (spec fields, shapes, empty foregrounds) with seeds 0-19, and over 400
# hypothesis-drawn float32 cases; torch 2.13.0 CPU. The worst measured value follows each entry.
# bf16/fp16 "naive", "vectorized" and "mixed" compute the softmax, products and backward in the
# half dtype ("mixed" sums in float32), so their worst gradients are on saturated logits (|x| ~ 100)
# where the softmax backward cancels; "fused" computes in float32 and rounds only its output.
_F32, _BF16, _F16 = torch.float32, torch.bfloat16, torch.float16
TOLERANCES = {
    ("naive", _F32): Tolerance(loss=1e-6, grad=1e-5),          # 1.6e-7, 2.9e-6
    ("naive", _BF16): Tolerance(loss=8e-3, grad=2e-1),         # 1.75e-3, 7.0e-2
    ("naive", _F16): Tolerance(loss=1e-3, grad=3e-2),          # 2.4e-4, 7.3e-3
    ("vectorized", _F32): Tolerance(loss=1e-6, grad=1e-5),     # 1.6e-7, 2.9e-6
    ("vectorized", _BF16): Tolerance(loss=8e-3, grad=2e-1),    # 1.75e-3, 7.0e-2
    ("vectorized", _F16): Tolerance(loss=1e-3, grad=3e-2),     # 2.4e-4, 7.3e-3
    ("mixed", _F32): Tolerance(loss=1e-6, grad=1e-5),          # 1.6e-7, 2.9e-6
    ("mixed", _BF16): Tolerance(loss=3e-3, grad=2e-1),         # 6.0e-4, 7.0e-2
    ("mixed", _F16): Tolerance(loss=3e-4, grad=3e-2),          # 6.4e-5, 7.3e-3
    ("fused", _F32): Tolerance(loss=1e-6, grad=1e-5),          # 1.5e-7, 2.9e-6
    ("fused", _BF16): Tolerance(loss=1e-6, grad=2e-2),         # 1.6e-7, 3.8e-3
    ("fused", _F16): Tolerance(loss=1e-6, grad=2e-3),          # 1.2e-7, 4.8e-4
}
# An implementation registered later is held to the loosest measured numbers until measured.
_DEFAULT = {dtype: TOLERANCES[("vectorized", dtype)] for dtype in (_F32, _BF16, _F16)}


def tolerance(impl: str, dtype: torch.dtype) -> Tolerance:
    """The stated tolerance of ``impl`` for logits of ``dtype``."""
    return TOLERANCES.get((impl, dtype), _DEFAULT[dtype])


def refuses_float_target(impl: str, logits: Tensor, target: Tensor, spec: dice_impls.DiceSpec) -> bool:
    """True, after asserting the TypeError, when ``target`` is float and ``impl`` takes label maps only."""
    if not target.is_floating_point() or not dice_impls.IMPLEMENTATIONS[impl].label_maps_only:
        return False
    with pytest.raises(TypeError, match="label map"):
        dice_impls.dice_loss(logits, target, spec, impl=impl)
    return True


def assert_matches_reference(impl: str, logits: Tensor, target: Tensor, spec: dice_impls.DiceSpec) -> Errors:
    """Assert the loss and gradient of ``impl`` are within ``tolerance(impl, dtype)`` of the reference.

    For an implementation that takes label maps only, a float target must raise the TypeError that
    says so (asserted), and nothing else is compared.
    """
    if refuses_float_target(impl, logits, target, spec):
        return Errors(0.0, 0.0)
    errors = errors_against_reference(impl, logits, target, spec)
    tol = tolerance(impl, logits.dtype)
    assert errors.loss <= tol.loss, f"{impl} {logits.dtype}: loss error {errors.loss:.3g} > {tol.loss:.3g} ({spec})"
    assert errors.grad <= tol.grad, f"{impl} {logits.dtype}: gradient error {errors.grad:.3g} > {tol.grad:.3g} ({spec})"
    return errors


# --- the fused operators: per-dtype tolerances and the dense Dice + pixel term (C++ and Triton tests) ---

DTYPE_TOLERANCES = {torch.float64: (1e-9, 1e-8), torch.float32: (1e-5, 1e-5), torch.bfloat16: (1e-3, 8e-3),
                    torch.float16: (1e-3, 1e-3)}


def grad_error(grad, expected):
    return float((grad.double() - expected).norm() / expected.norm().clamp_min(1e-300))


def loss_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def dense_compound(logits, labels, spec, lambda_dice, lambda_pixel, gamma=0.0, alpha=None, class_weight=None,
                   label_smoothing=0.0):
    """The same loss in float64 torch: reference Dice + the per-pixel term written out."""
    x = logits.double()
    c = x.shape[1]
    dice = dice_impls.dice_loss(x, labels, spec, impl="reference")
    counted = (labels >= 0) & (labels < c)
    if spec.ignore_index is not None:
        counted &= labels != spec.ignore_index
    y = torch.where(counted, labels, 0).long()
    log_p = F.log_softmax(x, 1)
    log_py = log_p.gather(1, y.unsqueeze(1)).squeeze(1)
    w = torch.ones(c, dtype=torch.float64) if class_weight is None else torch.tensor(class_weight, dtype=torch.float64)
    u = w.clone()
    if alpha is not None:
        u = u * torch.tensor([1 - alpha] + [alpha] * (c - 1), dtype=torch.float64)
    per_pixel = -(1 - label_smoothing) * u[y] * (1 - log_py.exp()) ** gamma * log_py
    per_pixel = per_pixel - label_smoothing / c * (log_p * w.view(1, c, *([1] * (x.ndim - 2)))).sum(1)
    total = (per_pixel * counted).sum()
    norm = (w[y] * counted).sum() if class_weight is not None else counted.sum().double()
    pixel = torch.where(norm != 0, total / torch.where(norm != 0, norm, 1.0), 0.0)  # any sign, as F.cross_entropy
    return lambda_dice * dice + lambda_pixel * pixel


COMPOUND_CASES = [
    dict(lambda_dice=1.0, lambda_pixel=1.0),
    dict(lambda_dice=0.5, lambda_pixel=2.0, class_weight=(0.2, 1.0, 3.0, 0.7)),
    dict(lambda_dice=1.0, lambda_pixel=1.0, label_smoothing=0.1),
    dict(lambda_dice=1.0, lambda_pixel=1.0, label_smoothing=0.2, class_weight=(1.0, 2.0, 0.5, 1.0)),
    dict(lambda_dice=1.0, lambda_pixel=1.0, gamma=2.0),
    dict(lambda_dice=1.0, lambda_pixel=0.5, gamma=0.5, alpha=0.25),
    dict(lambda_dice=0.0, lambda_pixel=1.0, gamma=1.0),
]


def compound_kwargs(case: int, channels: int) -> dict:
    """``COMPOUND_CASES[case]`` for ``channels`` classes: the case's class weights, then ones."""
    kwargs = dict(COMPOUND_CASES[case])
    if "class_weight" in kwargs:
        kwargs["class_weight"] = tuple(kwargs["class_weight"]) + (1.0,) * (channels - len(kwargs["class_weight"]))
    return kwargs
