"""segmentation_models_pytorch's region losses (main after 0.5.0, with ``class_weights``) as drop-ins:
``from dice_impls.compat.smp import DiceLoss``.

``DiceLoss``, ``TverskyLoss`` and ``JaccardLoss`` of ``segmentation_models_pytorch.losses`` with
smp's arguments and defaults. smp scores every class over the whole batch with its soft-label
Tversky index ``(I + smooth) / max(I + alpha FP + beta FN + smooth, eps)``, ``I = (sum p + sum g -
sum |p - g|) / 2`` (Dice: alpha = beta = 1/2, Jaccard: 1, 1), takes ``1 - score`` or, with
``log_loss``, ``-log(max(score, eps))`` per class, counts a class absent from the batch with loss
0, keeps the ``classes`` listed (repeats count again) and averages them, weighted by
``class_weights`` when given; Tversky raises that mean to ``gamma`` (with ``gamma`` < 1 a mean of
exactly 0 has gradient 0, where smp's is NaN). Modes: ``"binary"`` (one channel; target
``(N, *spatial)`` or ``(N, 1, *spatial)`` of {0, 1}), ``"multiclass"`` (softmax; an integer label
map ``(N, *spatial)``), ``"multilabel"`` (sigmoid per channel; target ``(N, C, *spatial)``).
docs/conventions.md "Drop-in classes" lists the mapping and the divergences.
"""

from __future__ import annotations

import math
from typing import List, Optional

from torch import Tensor, nn

from ..score import focal_power
from ..spec import DiceSpec
from .dispatch import check_tensors, dice

MODES = ("binary", "multiclass", "multilabel")


class _SmpRegionLoss(nn.Module):
    def __init__(self, mode: str, classes: Optional[List[int]], log_loss: bool, from_logits: bool, smooth: float,
                 ignore_index: Optional[int], eps: float, alpha: float, beta: float,
                 class_weights: Optional[List[float]]) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if classes is not None and mode == "binary":
            raise ValueError("Masking classes is not supported with mode=binary")
        if class_weights is not None and mode == "binary":
            raise ValueError("class_weights are not supported with mode=binary")
        if ignore_index is not None and mode == "multilabel":
            raise ValueError("ignore_index with mode='multilabel' is not supported here: smp masks each channel by "
                             "its own target values, the spec masks whole pixels of a label map")
        self.mode, self.classes = mode, None if classes is None else [int(c) for c in classes]
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        activation = ("softmax" if mode == "multiclass" else "sigmoid") if from_logits else "none"
        self.spec = DiceSpec(
            activation=activation, smooth_nr=float(smooth), smooth_dr=float(smooth), batch=True,
            ignore_index=ignore_index, min_denominator=float(eps), absent_classes="zero", log_loss=log_loss,
            fp_weight=float(alpha), fn_weight=float(beta), soft_label=True,
        )
        self.specs_by_channels: dict = {}  # spec_for's answers, built once per channel count
        # log_loss: smp clamps the score at eps before the log, the spec only at the smallest normal
        # float; -log(max(s, eps)) = min(-log s, -log eps) is applied to the per-class losses.
        self.log_clamp = -math.log(eps) if eps > 0 else math.inf
        self.per_class_spec = self.spec.replace(reduction="none") if log_loss else None

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        check_tensors(y_pred=y_pred, y_true=y_true)
        if y_true.size(0) != y_pred.size(0):
            raise ValueError(f"y_true has {y_true.size(0)} images, y_pred {y_pred.size(0)}")
        channels = y_pred.shape[1]
        if channels not in self.specs_by_channels:
            self.specs_by_channels[channels] = self.spec_for(channels)
        spec, target = self.specs_by_channels[channels], self.target(y_pred, y_true)
        if self.per_class_spec is None:
            return dice(y_pred, target, spec)
        losses = dice(y_pred, target, self.per_class_spec)[0].clamp_max(self.log_clamp)  # batch Dice: one unit
        if spec.weight is None:
            return losses.mean()
        weights = losses.new_tensor(spec.weight)  # smp's weighted mean over the selected classes
        return (losses * weights).sum() / weights.sum()

    def target(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        channels = y_pred.shape[1]
        if self.mode == "binary":
            if channels != 1:
                raise ValueError(f"mode='binary' takes one channel of y_pred, got {channels}")
            if y_true.is_floating_point():
                if self.spec.ignore_index is not None:
                    raise ValueError("ignore_index with a float binary target is not supported here; "
                                     "pass an integer label map")
                return y_true if y_true.ndim == y_pred.ndim else y_true.unsqueeze(1)
            return y_true
        if self.mode == "multiclass":
            if y_true.is_floating_point():
                raise TypeError(f"mode='multiclass' takes an integer label map, got {y_true.dtype}")
            return y_true
        if y_true.shape != y_pred.shape:
            raise ValueError(f"mode='multilabel' takes a target of y_pred's shape {tuple(y_pred.shape)}, "
                             f"got {tuple(y_true.shape)}")
        return y_true if y_true.is_floating_point() else y_true.to(y_pred.dtype)

    def spec_for(self, channels: int) -> DiceSpec:
        """smp's class selection and weights as the spec's weighted mean over classes."""
        if self.classes is None and self.class_weights is None:
            return self.spec
        if self.class_weights is not None and len(self.class_weights) != channels:
            raise ValueError(f"class_weights has {len(self.class_weights)} entries for {channels} channels")
        weights = self.class_weights or [1.0] * channels
        if self.classes is None:
            return self.spec.replace(weight=tuple(weights))
        if not all(-channels <= c < channels for c in self.classes):
            raise ValueError(f"classes {self.classes} out of range for {channels} channels")
        selected = [0.0] * channels  # smp indexes the per-class losses by `classes`: a repeat counts twice
        for c in self.classes:
            selected[c % channels] += weights[c]
        return self.spec.replace(weight=tuple(selected))


class DiceLoss(_SmpRegionLoss):
    """``segmentation_models_pytorch.losses.DiceLoss``."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 0.5, 0.5, class_weights)


class JaccardLoss(_SmpRegionLoss):
    """``segmentation_models_pytorch.losses.JaccardLoss``."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, class_weights: Optional[List[float]] = None) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, 1.0, 1.0, class_weights)


class TverskyLoss(_SmpRegionLoss):
    """``segmentation_models_pytorch.losses.TverskyLoss``: the class mean raised to ``gamma``."""

    def __init__(self, mode: str, classes: Optional[List[int]] = None, log_loss: bool = False,
                 from_logits: bool = True, smooth: float = 0.0, ignore_index: Optional[int] = None,
                 eps: float = 1e-7, alpha: float = 0.5, beta: float = 0.5, gamma: float = 1.0,
                 class_weights: Optional[List[float]] = None) -> None:
        super().__init__(mode, classes, log_loss, from_logits, smooth, ignore_index, eps, alpha, beta, class_weights)
        self.gamma = gamma

    def forward(self, y_pred: Tensor, y_true: Tensor) -> Tensor:
        # smp's gamma acts on the mean over classes, not per class (the spec's focal_gamma would be per class)
        loss = super().forward(y_pred, y_true)
        if not 0 < self.gamma < 1:
            return loss ** self.gamma
        # At a loss of exactly 0 (every kept class absent from the batch, or scored perfectly)
        # d(m^gamma)/dm is infinite, and smp's gradient is NaN (inf times its absent-class mask of
        # 0); ours is 0. Any positive loss is smp's (a negative one, possible only with alpha or beta
        # below 0, is 0 here and NaN in smp).
        return focal_power(loss, self.gamma)
