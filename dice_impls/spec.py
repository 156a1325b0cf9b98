"""The one definition of the soft Dice loss that every implementation follows.

Per class ``c`` over a reduction unit (one image, or the whole batch when ``batch=True``), with
``m = 0`` on ignored pixels::

    p      = activation(logits)                         softmax over C | sigmoid | identity
    tp_c   = sum m * p_c * g_c
    P_c    = sum m * p_c**k          G_c = sum m * g_c**k        (k = 2 if squared else 1)
    score  = ((1 + beta**2) * tp_c + smooth_nr) / max(P_c + beta**2 * G_c + smooth_dr, min_denominator)
    loss_c = 1 - score               (-log(score) with log_loss, -score with negate)

A zero denominator (nothing predicted, nothing present, no smoothing) gives ``score = 1``: an
empty prediction of an empty class is perfect, so its loss is 0 with a zero gradient.
Class 0 is dropped when ``include_background=False``; ``weight`` gives a weighted mean over
classes; ``reduction`` then averages (or sums) over reduction units. See README "Semantics".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Optional, Tuple

ACTIVATIONS = ("softmax", "sigmoid", "none")
REDUCTIONS = ("mean", "sum", "none")
AVERAGES = ("macro", "micro")
ABSENT_CLASS_MODES = ("include", "zero", "exclude")
OUT_OF_RANGE_MODES = ("error", "zero_target")


@dataclass(frozen=True)
class DiceSpec:
    """Every option of the soft Dice loss.

    Attributes:
        activation: ``"softmax"`` over the channel axis, ``"sigmoid"`` per channel, or ``"none"``
            when the input already holds probabilities.
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        beta: F-beta weight of recall; ``beta=1`` is Dice. The denominator is ``P + beta**2 * G``.
        squared: ``P = sum p**2`` and ``G = sum g**2`` (V-Net / MONAI ``squared_pred``).
        batch: one Dice per class over the whole batch instead of one per image.
        include_background: keep class 0 in the loss.
        ignore_index: label whose pixels leave every sum, prediction and target alike
            (integer label maps only).
        weight: one non-negative weight per channel of the logits; the loss is the weighted mean
            over classes ``sum w_c l_c / sum w_c``.
        reduction: ``"mean"`` over reduction units, ``"sum"``, or ``"none"`` (the weighted
            per-unit, per-class losses ``w_c * l_c``, shape ``(units, classes)``).
        log_loss: ``loss = -log(score)`` (score clamped at the smallest normal float32, 1.2e-38,
            whatever the statistics' dtype, so the loss is at most 87.3).
        average: ``"macro"`` scores each class; ``"micro"`` pools the (weighted) sums of all
            classes into one score per unit (kornia's default).
        min_denominator: the denominator is clamped from below at this value after smoothing
            (nnU-Net 1e-8, segmentation_models_pytorch's ``eps`` 1e-7).
        absent_classes: a class with ``G_c = 0`` in a unit is scored as usual (``"include"``),
            counted with loss 0 (``"zero"``, smp), or left out of the unit's weighted mean
            (``"exclude"``, kornia macro; a unit with no present class then has loss 1).
        negate: ``loss = -score`` (nnU-Net's form; differs from ``1 - score`` by a constant).
        out_of_range: labels outside ``[0, C)`` that are not ``ignore_index`` raise
            (``"error"``) or count as background for every class while their prediction still
            counts (``"zero_target"``: the seed's dropped extra one-hot channel).
        resize_logits: when the logits' spatial size differs from the target's, resize the
            logits (bilinear / trilinear, ``align_corners=True``) instead of raising.
    """

    activation: Literal["softmax", "sigmoid", "none"] = "softmax"
    smooth_nr: float = 1e-5
    smooth_dr: float = 1e-5
    beta: float = 1.0
    squared: bool = False
    batch: bool = False
    include_background: bool = True
    ignore_index: Optional[int] = None
    weight: Optional[Tuple[float, ...]] = None
    reduction: Literal["mean", "sum", "none"] = "mean"
    log_loss: bool = False
    average: Literal["macro", "micro"] = "macro"
    min_denominator: float = 0.0
    absent_classes: Literal["include", "zero", "exclude"] = "include"
    negate: bool = False
    out_of_range: Literal["error", "zero_target"] = "error"
    resize_logits: bool = False

    def __post_init__(self) -> None:
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("reduction", self.reduction, REDUCTIONS)
        _check_choice("average", self.average, AVERAGES)
        _check_choice("absent_classes", self.absent_classes, ABSENT_CLASS_MODES)
        _check_choice("out_of_range", self.out_of_range, OUT_OF_RANGE_MODES)
        for name in ("smooth_nr", "smooth_dr", "beta", "min_denominator"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"DiceSpec.{name} must be a number, got {type(value).__name__}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"DiceSpec.{name} must be finite and >= 0, got {value}")
        if self.ignore_index is not None and (
            isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int)
        ):
            raise TypeError(f"DiceSpec.ignore_index must be an int or None, got {self.ignore_index!r}")
        if self.weight is not None:
            weight = tuple(float(w) for w in self.weight)
            if not weight:
                raise ValueError("DiceSpec.weight must hold one weight per class, got an empty sequence")
            if any(not math.isfinite(w) or w < 0 for w in weight):
                raise ValueError(f"DiceSpec.weight must be finite and >= 0, got {weight}")
            if sum(weight) == 0:
                raise ValueError("DiceSpec.weight must have a positive sum")
            object.__setattr__(self, "weight", weight)
        if self.log_loss and self.negate:
            raise ValueError("DiceSpec.log_loss and DiceSpec.negate are exclusive: pick one loss form")
        if self.average == "micro" and self.absent_classes != "include":
            raise ValueError("DiceSpec.absent_classes applies to average='macro' only")

    def replace(self, **changes) -> "DiceSpec":
        """A copy with ``changes`` applied; unknown field names raise a TypeError naming them."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise TypeError(f"unknown DiceSpec field(s) {unknown}; fields are {field_names()}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides) -> "DiceSpec":
        """The default conventions of a peer library, optionally changed by ``overrides``.

        Names: see ``PRESETS``. docs/conventions.md lists what each preset reproduces and the
        tests that prove it against the real package or its published formula.
        """
        try:
            fields = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return cls().replace(**fields).replace(**overrides)


def field_names() -> list:
    return [f.name for f in dataclasses.fields(DiceSpec)]


def _check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"DiceSpec.{name} must be one of {choices}, got {value!r}")


PRESETS = {
    # monai.losses.DiceLoss(softmax=True, to_onehot_y=True): per image, background included.
    "monai": dict(activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=False),
    # nnunetv2 MemoryEfficientSoftDiceLoss as its trainer builds it: smooth 1e-5, do_bg=False,
    # batch dice (the default plans), denominator clipped at 1e-8, loss = -dice.
    "nnunet": dict(
        activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=True,
        include_background=False, min_denominator=1e-8, negate=True,
    ),
    # segmentation_models_pytorch DiceLoss(mode="multiclass"): smooth 0, eps 1e-7 clamp,
    # batch sums, classes absent from the batch count with loss 0.
    "smp": dict(
        activation="softmax", smooth_nr=0.0, smooth_dr=0.0, batch=True,
        min_denominator=1e-7, absent_classes="zero",
    ),
    # kornia.losses.dice_loss: eps 1e-8 in the denominator only, per image, micro average,
    # label -100 ignored.
    "kornia": dict(
        activation="softmax", smooth_nr=0.0, smooth_dr=1e-8, batch=False, average="micro", ignore_index=-100,
    ),
    # The seed's Dice_loss: batch sums, smooth 1e-5, labels >= C are dropped from the target
    # only, logits resized to the target (on any mismatch, unlike the seed's `and` test).
    "seed": dict(
        activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=True,
        out_of_range="zero_target", resize_logits=True,
    ),
}
