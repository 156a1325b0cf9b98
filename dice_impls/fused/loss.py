"""``dice_loss(impl="fused")``: the folded C++ operator where ``routing.fusion`` says so, else the
fused statistics (C++, chunked or Triton kernels) scored by ``loss_from_statistics``.

``fused_statistics`` also takes an explicit ``backend`` (``"cpp"``, ``"chunked"``, ``"triton"``;
the Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``) and ``deterministic``
(fixed-order reduction instead of atomics on GPU; default:
``torch.are_deterministic_algorithms_enabled()``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ..checks import check_finite_logits, check_label_range, comparable_labels, label_range_flag, prepare_inputs
from ..registry import Implementation
from ..score import DiceStatistics, loss_from_statistics
from ..spec import DiceSpec
from . import ops
from .interface import KernelParams, PixelTerm, folded_op_args
from .routing import FOLDED, fusion

# Read without a copy; other integer dtypes (uint16/32/64) are converted to int64 once
# (``checks.comparable_labels``; validation has usually done it already).
NATIVE_LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

def label_codes(target: Tensor) -> Tensor:
    if target.dtype == torch.bool:
        return target.view(torch.uint8)
    return target if target.dtype in NATIVE_LABEL_DTYPES else comparable_labels(target)


def validate_on_host(logits: Tensor, labels: Tensor, probe: Tensor, spec: DiceSpec) -> None:
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

    Takes integer label maps ``(N, *spatial)`` or ``(N, 1, *spatial)`` only; non-contiguous logits
    or labels are made contiguous first (one copy). ``validate``: refuse NaN/inf logits and
    out-of-range labels (inside the C++ kernel's pass; one host sync for Triton).
    """
    operators = ops.backend_operators(backend, logits.device)
    x = logits.contiguous()
    labels = label_codes(target).contiguous()
    if operators.validates:
        stats, _ = operators.statistics(x, labels, *KernelParams.from_spec(spec), validate,
                                        validate and spec.out_of_range == "error")
    else:
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        stats, probe = operators.statistics(x, labels, *KernelParams.from_spec(spec), deterministic)
        if validate:
            validate_on_host(x, labels, probe, spec)
    dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    return DiceStatistics(*stats.to(dtype).unbind(0))


def folded_loss(logits: Tensor, labels: Tensor, spec: DiceSpec, *, validate: bool = True, lambda_dice: float = 1.0,
                pixel: Optional[PixelTerm] = None) -> Tensor:
    """``lambda_dice * Dice (+ the pixel term)`` by the C++ ``loss`` operator (``routing.FOLDED``)."""
    x = logits.contiguous()
    codes = label_codes(labels).contiguous()
    args = folded_op_args(spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel)
    if torch.compiler.is_compiling():  # the operator whose autograd formula the compiler traces
        return torch.ops.dice_fused.loss(x, codes, *args)[0]
    return torch.ops.dice_fused.eager_loss(x, codes, *args)


def prepare(logits: Tensor, target: Tensor, spec: DiceSpec, validate: bool):
    """Shape checks in Python; value checks happen in the kernels (``validate``). A float target is
    refused, after the checks of its values (their errors say more). A label map ``(N, 1, *spatial)``
    stays as it is: every backend reads labels by pixel count."""
    float_target = isinstance(target, Tensor) and target.is_floating_point()
    logits, target = prepare_inputs(logits, target, spec, check_finite=False, validate=float_target and validate,
                                    squeeze_labels=False)
    if float_target:
        raise TypeError("impl='fused' takes integer label maps only; for float one-hot or soft targets "
                        "use impl='vectorized'")
    return logits, target


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
