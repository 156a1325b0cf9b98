"""The one definition of the soft Dice loss family that every implementation follows.

Per class ``c`` over a reduction unit (one image, or the whole batch when ``batch=True``), with
``m = 0`` on ignored pixels::

    p      = activation(logits)                         softmax over C | sigmoid | identity
    tp_c   = sum m * p_c * g_c                          (soft_label, k = 1: sum m * min(p_c, g_c))
    P_c    = sum m * p_c**k          G_c = sum m * g_c**k        (k = 2 if squared else 1)
    fp_c   = P_c - tp_c              fn_c = G_c - tp_c

    score  = (num_c + smooth_nr) / max(den_c + smooth_dr, min_denominator)    (no max when min_denominator = 0)
             F-beta (default):  num = (1 + beta**2) tp           den = P + beta**2 G
             Tversky:           num = tp                         den = tp + fp_weight fp + fn_weight fn
             jaccard:           num = 2 tp                       den = 2 (P + G - tp)
    loss_c = 1 - score   ((1 - score)**focal_gamma; -log(score) with log_loss; -score with negate)

A zero denominator (nothing predicted, nothing present, no smoothing) gives ``score = 1``: an
empty prediction of an empty class is perfect, so its loss is 0 with a zero gradient.
Class 0 is dropped when ``include_background=False``; ``weight`` gives a weighted mean over
classes; ``average="micro"`` and ``generalized`` pool the classes' weighted ``num`` and ``den``
into one score per unit; ``reduction`` then averages (or sums) over reduction units. See
``DiceSpec`` for every field, docs/conventions.md "Dice family" for the references.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import Iterable, Literal, Optional, Tuple

ACTIVATIONS = ("softmax", "sigmoid", "none")
REDUCTIONS = ("mean", "sum", "none")
AVERAGES = ("macro", "micro")
ABSENT_CLASS_MODES = ("include", "zero", "exclude")
OUT_OF_RANGE_MODES = ("error", "zero_target")
GENERALIZED_WEIGHTS = (None, "square", "simple", "uniform")
INT64 = (-(2**63), 2**63 - 1)
NUMBER_FIELDS = ("smooth_nr", "smooth_dr", "beta", "min_denominator", "fp_weight", "fn_weight", "focal_gamma")


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
        reduction: ``"mean"`` over reduction units (0 for a batch of no images), ``"sum"``, or
            ``"none"`` (the weighted per-unit, per-class losses ``w_c * l_c``, shape ``(units, classes)``).
        log_loss: ``loss = -log(score)`` (score clamped at the smallest normal float32, 1.2e-38,
            whatever the statistics' dtype, so the loss is at most 87.3).
        average: ``"macro"`` scores each class; ``"micro"`` pools the (weighted) sums of all
            classes into one score per unit (kornia's default).
        min_denominator: the denominator is clamped from below at this value after smoothing
            (nnU-Net 1e-8, segmentation_models_pytorch's ``eps`` 1e-7). 0 clamps nothing: a
            negative denominator (``activation="none"`` on values outside [0, 1]) is divided by
            as it is, MONAI's value, not scored as an empty one.
        absent_classes: a class with ``G_c = 0`` in a unit is scored as usual (``"include"``),
            counted with loss 0 (``"zero"``, smp), or left out of the unit's weighted mean
            (``"exclude"``, kornia macro; a unit with no present class then has loss 1).
        negate: ``loss = -score`` (nnU-Net's form; differs from ``1 - score`` by a constant).
        out_of_range: labels outside ``[0, C)`` that are not ``ignore_index`` raise
            (``"error"``) or count as background for every class while their prediction still
            counts (``"zero_target"``: the seed's dropped extra one-hot channel).
        resize_logits: when the logits' spatial size differs from the target's, resize the
            logits (bilinear / trilinear, ``align_corners=True``) instead of raising.
        fp_weight, fn_weight: the Tversky index (Salehi et al. 2017) with false positives weighted
            by ``fp_weight`` (alpha) and false negatives by ``fn_weight`` (beta):
            ``(tp + smooth_nr) / (tp + alpha fp + beta fn + smooth_dr)``, ``fp = P - tp``,
            ``fn = G - tp``. Give both or neither; neither is the F-beta form of ``beta`` (which
            must stay 1 with them). The F-beta form with ``(smooth_nr, smooth_dr, min_denominator)``
            equals Tversky ``alpha = 1 / (1 + beta**2)``, ``beta_T = beta**2 / (1 + beta**2)``
            with those three divided by ``1 + beta**2`` (Dice: ``alpha = beta_T = 1/2``, halved);
            ``jaccard=True`` equals Tversky ``(1, 1)`` with them halved.
        focal_gamma: the per-class loss is ``(1 - score)**focal_gamma`` (focal Tversky, Abraham &
            Khan 2019, whose exponent ``1/gamma`` is this field; base clamped at 0, zero gradient
            there); 1.0 is off. Not with ``log_loss`` or ``negate``.
        jaccard: score the Jaccard index (IoU) in MONAI's form ``(2 tp + smooth_nr) /
            (2 (P + G - tp) + smooth_dr)``, which is Tversky ``fp_weight = fn_weight = 1`` with
            ``smooth_nr``, ``smooth_dr`` and ``min_denominator`` halved. Not with ``beta != 1`` or
            ``fp_weight``/``fn_weight``.
        generalized: generalized Dice (Sudre et al. 2017): per unit one score
            ``(sum_c w_c num_c + smooth_nr) / (sum_c w_c den_c + smooth_dr)`` with class weights
            ``w_c = 1 / G_c**2`` (``"square"``), ``1 / G_c`` (``"simple"``) or 1 (``"uniform"``),
            computed from the unit's ``G_c`` (after ``include_background``) as constants
            (no gradient). A class absent from the unit (``G_c = 0``, infinite weight) gets the
            largest finite weight of the unit; when no class of the unit is present every weight
            is 0 and the score is ``smooth_nr / smooth_dr`` (1 when that denominator is 0). This
            is MONAI 1.6's ``GeneralizedDiceLoss`` rule. Not with ``average="micro"`` (it is
            already a pooled average), ``weight``, or ``absent_classes`` other than ``"include"``;
            ``reduction="none"`` gives shape ``(units, 1)``.
        soft_label: for float targets with ``k = 1``, ``tp = sum m min(p, g)``, which is
            ``(sum m p + sum m g - sum m |p - g|) / 2`` (Wang et al. 2023; MONAI ``soft_label``):
            the loss is 0 exactly when ``p = g``, also for soft targets. On hard targets (label
            maps, one-hot) with ``p`` in [0, 1], and always with ``squared``, it equals the
            ordinary ``sum m p g``; label maps therefore use the ordinary form.
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
    fp_weight: Optional[float] = None
    fn_weight: Optional[float] = None
    focal_gamma: float = 1.0
    jaccard: bool = False
    generalized: Optional[Literal["square", "simple", "uniform"]] = None
    soft_label: bool = False

    def __post_init__(self) -> None:
        self._plain_numbers()
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_choice("reduction", self.reduction, REDUCTIONS)
        _check_choice("average", self.average, AVERAGES)
        _check_choice("absent_classes", self.absent_classes, ABSENT_CLASS_MODES)
        _check_choice("out_of_range", self.out_of_range, OUT_OF_RANGE_MODES)
        _check_choice("generalized", self.generalized, GENERALIZED_WEIGHTS)
        for name in NUMBER_FIELDS:
            value = getattr(self, name)
            if value is None and name in ("fp_weight", "fn_weight"):
                continue
            _check_number(name, value)
        for name in ("squared", "batch", "include_background", "log_loss", "negate", "resize_logits", "jaccard",
                     "soft_label"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"DiceSpec.{name} must be True or False, got {getattr(self, name)!r}")
        if self.ignore_index is not None:
            if isinstance(self.ignore_index, bool) or not isinstance(self.ignore_index, int):
                raise TypeError(f"DiceSpec.ignore_index must be an int or None, got {self.ignore_index!r}")
            if not INT64[0] <= self.ignore_index <= INT64[1]:
                raise ValueError(f"DiceSpec.ignore_index must fit in int64, got {self.ignore_index}")
        if self.weight is not None:
            object.__setattr__(self, "weight", _class_weights(self.weight))
        if self.log_loss and self.negate:
            raise ValueError("DiceSpec.log_loss and DiceSpec.negate are exclusive: pick one loss form")
        if self.average == "micro" and self.absent_classes != "include":
            raise ValueError("DiceSpec.absent_classes applies to average='macro' only")
        self._check_family()

    def _plain_numbers(self) -> None:
        """NumPy scalars (``np.int64(255)``, ``np.float32(1e-5)``, as configs and arrays give them) become
        Python ints and floats; other types are left for the checks to name."""
        for name in ("ignore_index", *NUMBER_FIELDS):
            value = getattr(self, name)
            if isinstance(value, (bool, int, float)) or not isinstance(value, numbers.Real):
                continue
            if name == "ignore_index" and not isinstance(value, numbers.Integral):
                continue  # a float ignore_index is refused by its check
            object.__setattr__(self, name, int(value) if isinstance(value, numbers.Integral) else float(value))

    def _check_family(self) -> None:
        if (self.fp_weight is None) != (self.fn_weight is None):
            raise ValueError("DiceSpec.fp_weight and DiceSpec.fn_weight go together: give both (Tversky) or neither")
        tversky = self.fp_weight is not None
        if tversky and self.beta != 1:
            raise ValueError("DiceSpec.beta must be 1 with fp_weight/fn_weight (Tversky has its own FP/FN weights)")
        if self.jaccard and (tversky or self.beta != 1):
            raise ValueError("DiceSpec.jaccard excludes beta != 1 and fp_weight/fn_weight (Jaccard is Tversky 1, 1)")
        if self.focal_gamma <= 0:
            raise ValueError(f"DiceSpec.focal_gamma must be > 0, got {self.focal_gamma}")
        if self.focal_gamma != 1 and (self.log_loss or self.negate):
            raise ValueError("DiceSpec.focal_gamma applies to the 1 - score form, not with log_loss or negate")
        if self.generalized is not None:
            if self.average == "micro":
                raise ValueError("DiceSpec.generalized pools the classes itself: leave average='macro'")
            if self.weight is not None:
                raise ValueError("DiceSpec.generalized computes its own class weights: leave weight=None")
            if self.absent_classes != "include":
                raise ValueError("DiceSpec.generalized has its own absent-class rule: leave absent_classes='include'")

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


def _check_number(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"DiceSpec.{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"DiceSpec.{name} must be finite and >= 0, got {value}")


def _class_weights(weight: object) -> tuple:
    not_a_sequence = TypeError(f"DiceSpec.weight must be a sequence of numbers (one per class) or None, got {weight!r}")
    if isinstance(weight, (str, bytes, numbers.Number)) or not isinstance(weight, Iterable):
        raise not_a_sequence
    try:
        weight = tuple(weight)
    except TypeError:  # e.g. a 0-d tensor
        raise not_a_sequence from None
    if any(isinstance(w, (str, bytes, bool)) for w in weight):
        raise TypeError(f"DiceSpec.weight must hold numbers, got {weight!r}")
    weight = tuple(float(w) for w in weight)
    if not weight:
        raise ValueError("DiceSpec.weight must hold one weight per class, got an empty sequence")
    if any(not math.isfinite(w) or w < 0 for w in weight):
        raise ValueError(f"DiceSpec.weight must be finite and >= 0, got {weight}")
    if sum(weight) == 0:
        raise ValueError("DiceSpec.weight must have a positive sum")
    return weight


PRESETS = {
    # monai.losses.DiceLoss(softmax=True, to_onehot_y=True): per image, background included.
    "monai": dict(activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=False),
    # nnunetv2 MemoryEfficientSoftDiceLoss as its trainer builds it: smooth 1e-5, do_bg=False,
    # batch dice (the default plans), denominator clipped at 1e-8, loss = -dice.
    "nnunet": dict(
        activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=True,
        include_background=False, min_denominator=1e-8, negate=True,
    ),
    # segmentation_models_pytorch DiceLoss(mode="multiclass") since 0.4: smooth 0, batch sums, the
    # Tversky index at alpha = beta = 1/2 with the soft-label intersection sum min(p, g), its
    # denominator clamped at eps 1e-7; classes absent from the batch count with loss 0.
    "smp": dict(
        activation="softmax", smooth_nr=0.0, smooth_dr=0.0, batch=True, fp_weight=0.5, fn_weight=0.5,
        soft_label=True, min_denominator=1e-7, absent_classes="zero",
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
