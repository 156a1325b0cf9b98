"""What the kernels and operators of ``fused`` take and return, by name.

``KernelParams`` (what every kernel knows of the spec), ``KernelPair`` (a backend's statistics and
gradient kernels), ``PixelTerm`` (the cross-entropy / focal term) and ``FoldedLossArgs``: the folded
loss operator's arguments, built from a ``DiceSpec`` in one place.

``torch.ops.dice_fused.loss`` (and ``eager_loss``; ``loss_backward`` without the two checks) takes,
after the logits and labels, the kernels' parameters, then the scoring as two arrays, ``flags``
and ``scalars``, and three optional per-class weight lists. ``FoldedLossArgs`` names every entry;
``to_op_args()`` writes them in the order of its fields, which the C++ side declares as well
(``FOLDED_FLAGS`` / ``FOLDED_SCALARS`` in ``fused_scoring.h``) and returns from
``folded_loss_layout()``: ``check_layout`` compares the two when the extension loads, so an index
has one meaning, written here and there, and checked.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor

from ..score import score_coefficients
from ..spec import DiceSpec

GENERALIZED = (None, "square", "simple", "uniform")
ABSENT_CLASSES = ("include", "zero", "exclude")
REDUCTIONS = ("none", "mean", "sum")
_FLAG, _SCALAR = {"op": "flag"}, {"op": "scalar"}


class KernelParams(NamedTuple):
    """What the kernels need to know of the spec: the activation, k, the ignored label."""

    activation: int  # 0 softmax, 1 sigmoid, 2 identity
    squared: bool
    ignore_index: Optional[int]

    @classmethod
    def from_spec(cls, spec: DiceSpec) -> "KernelParams":
        return cls(("softmax", "sigmoid", "none").index(spec.activation), spec.squared, spec.ignore_index)


class KernelPair(NamedTuple):
    """A backend's two kernels over ``logits (N, C, V)`` (contiguous) and ``labels (N, V)``.

    ``statistics(logits, labels, params, deterministic) -> (stats (3, N, C) float64, probe)``, with
    ``probe`` a scalar that is NaN or inf exactly when a logit is; ``gradient(logits, labels, a, b,
    params) -> dlogits`` with ``a``, ``b`` contiguous ``(N, C)`` float64, in the logits' dtype.
    """

    statistics: Callable
    gradient: Callable


def output_buffer(shape, device, dtype) -> Tensor:
    """Memory a kernel must overwrite entirely; tests replace this with NaN-filled buffers."""
    return torch.empty(shape, device=device, dtype=dtype)


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


def _floats(values: Optional[Sequence[float]]) -> Optional[list]:
    return None if values is None else [float(v) for v in values]


@dataclass
class FoldedLossArgs:
    """Every argument of the folded loss operator after ``(logits, labels)``.

    Flags: ``micro`` pools the classes with ``weight``; ``generalized`` is the index of the spec's
    ``generalized`` in ``GENERALIZED`` (0: off), ``absent_classes`` in ``ABSENT_CLASSES``,
    ``reduction`` in ``REDUCTIONS``. Scalars: the score is ``(numerator_tp tp + smooth_nr) /
    (denominator_tp tp + denominator_pred P + denominator_target G + smooth_dr)``
    (``score.score_coefficients``), clamped at ``min_denominator`` when that is > 0; the loss is
    ``lambda_dice * Dice + lambda_pixel * the pixel term`` (``PixelTerm``: ``pixel_gamma``,
    ``label_smoothing``, ``pixel_weight`` = its ``u``, ``norm_weight`` = its ``d``).
    """

    kernel: KernelParams
    check_finite: bool
    check_labels: bool
    batch: bool = field(metadata=_FLAG)
    include_background: bool = field(metadata=_FLAG)
    micro: bool = field(metadata=_FLAG)
    generalized: int = field(metadata=_FLAG)
    log_loss: bool = field(metadata=_FLAG)
    negate: bool = field(metadata=_FLAG)
    absent_classes: int = field(metadata=_FLAG)
    reduction: int = field(metadata=_FLAG)
    numerator_tp: float = field(metadata=_SCALAR)
    denominator_tp: float = field(metadata=_SCALAR)
    denominator_pred: float = field(metadata=_SCALAR)
    denominator_target: float = field(metadata=_SCALAR)
    smooth_nr: float = field(metadata=_SCALAR)
    smooth_dr: float = field(metadata=_SCALAR)
    min_denominator: float = field(metadata=_SCALAR)
    focal_gamma: float = field(metadata=_SCALAR)
    lambda_dice: float = field(metadata=_SCALAR)
    lambda_pixel: float = field(metadata=_SCALAR)
    pixel_gamma: float = field(metadata=_SCALAR)
    label_smoothing: float = field(metadata=_SCALAR)
    weight: Optional[list] = None
    pixel_weight: Optional[list] = None
    norm_weight: Optional[list] = None

    @classmethod
    def from_spec(cls, spec: DiceSpec, *, validate: bool = True, lambda_dice: float = 1.0,
                  pixel: Optional[PixelTerm] = None) -> "FoldedLossArgs":
        """The arguments of ``spec``'s loss (times ``lambda_dice``, plus ``pixel``); ``validate``:
        the kernel refuses NaN/inf logits and (with ``out_of_range="error"``) out-of-range labels."""
        pixel = pixel or PixelTerm(weight=0.0)
        numerator_tp, denominator_tp, denominator_pred, denominator_target = score_coefficients(spec)
        return cls(
            KernelParams.from_spec(spec), validate, validate and spec.out_of_range == "error",
            spec.batch, spec.include_background, spec.average == "micro", GENERALIZED.index(spec.generalized),
            spec.log_loss, spec.negate, ABSENT_CLASSES.index(spec.absent_classes), REDUCTIONS.index(spec.reduction),
            numerator_tp, denominator_tp, denominator_pred, denominator_target, float(spec.smooth_nr),
            float(spec.smooth_dr), float(spec.min_denominator), float(spec.focal_gamma), float(lambda_dice),
            float(pixel.weight), float(pixel.gamma), float(pixel.label_smoothing), _floats(spec.weight),
            _floats(pixel.numerator_weight), _floats(pixel.normalizer_weight),
        )

    def to_op_args(self) -> tuple:
        """``(activation, squared, ignore_index, check_finite, check_labels, flags, scalars, weight,
        pixel_weight, norm_weight)``, what ``torch.ops.dice_fused.loss`` takes after the tensors."""
        return (*self.kernel, self.check_finite, self.check_labels, [int(getattr(self, name)) for name in FLAGS],
                [float(getattr(self, name)) for name in SCALARS], self.weight, self.pixel_weight, self.norm_weight)

    @classmethod
    def from_op_args(cls, args: Sequence) -> "FoldedLossArgs":
        """The inverse of ``to_op_args`` (fake kernels and autograd formulas read the arguments by name)."""
        activation, squared, ignore_index, check_finite, check_labels, flags, scalars, *weights = args
        return cls(KernelParams(activation, squared, ignore_index), check_finite, check_labels, *flags, *scalars,
                   *weights)

    def backward_op_args(self) -> tuple:
        """What ``loss_backward`` takes after ``(grad, logits, labels, saved, codes)``: no checks."""
        activation, squared, ignore_index, _, _, *scoring = self.to_op_args()
        return (activation, squared, ignore_index, *scoring)

    def loss_shape(self, images: int, channels: int) -> Tuple[int, ...]:
        """The shape of the operator's loss: ``()``, or ``(units, entries)`` with reduction "none"."""
        if REDUCTIONS[self.reduction] != "none":
            return ()
        pooled = self.micro or self.generalized != 0
        return (1 if self.batch else images, 1 if pooled else channels - (not self.include_background))


FLAGS = tuple(f.name for f in dataclasses.fields(FoldedLossArgs) if f.metadata.get("op") == "flag")
SCALARS = tuple(f.name for f in dataclasses.fields(FoldedLossArgs) if f.metadata.get("op") == "scalar")


def check_layout(layout: Sequence[str]) -> None:
    """Refuse a C++ extension whose ``flags``/``scalars`` order is not ``FoldedLossArgs``'s."""
    separator = list(layout).index("|") if "|" in layout else len(layout)
    flags, scalars = tuple(layout[:separator]), tuple(layout[separator + 1:])
    if (flags, scalars) != (FLAGS, SCALARS):
        raise RuntimeError(f"the C++ extension's folded loss arguments {flags} / {scalars} are not FoldedLossArgs' "
                           f"{FLAGS} / {SCALARS}: rebuild it (python setup.py build_ext --inplace)")


@functools.lru_cache(maxsize=256)
def _cached_op_args(spec: DiceSpec, validate: bool, lambda_dice: float, pixel: Optional[PixelTerm]) -> tuple:
    return FoldedLossArgs.from_spec(spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel).to_op_args()


def folded_op_args(spec: DiceSpec, *, validate: bool = True, lambda_dice: float = 1.0,
                   pixel: Optional[PixelTerm] = None) -> tuple:
    """``FoldedLossArgs.from_spec(...).to_op_args()``, built once per spec and term: building them
    is a quarter of a small call's fixed cost (docs/performance.md). The operators only read them."""
    try:
        return _cached_op_args(spec, validate, lambda_dice, pixel)
    except TypeError:  # unhashable per-class weights (a list or a tensor): built for this call
        return FoldedLossArgs.from_spec(spec, validate=validate, lambda_dice=lambda_dice, pixel=pixel).to_op_args()
