"""MONAI 1.6's Dice losses as drop-ins: ``from dice_impls.compat.monai import DiceLoss``.

Same class names, arguments (names, order, defaults) and output shapes as ``monai.losses``
``DiceLoss``, ``GeneralizedDiceLoss``, ``TverskyLoss``, ``DiceCELoss`` and ``DiceFocalLoss``.
Each maps its arguments onto a ``DiceSpec``: MONAI's "mean" and "sum" over the (unit, class)
losses are the spec's (its weighted mean times ``sum(w) / K`` with class weights), so the fused
operator returns the loss itself; "none" is the spec's per-unit, per-class losses in MONAI's shape.
Targets: a label map ``(N, 1, *spatial)`` of any integer dtype or float (MONAI's loaders give
float32 labels) with ``to_onehot_y=True``, or a one-hot / soft target ``(N, C, *spatial)``.
docs/conventions.md "Drop-in classes" lists the mapping and the divergences.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..checks import check_label_smoothing
from ..compound import binary_cross_entropy, cross_entropy, focal_loss
from ..fused import compound_loss as fused_compound_loss
from ..spec import DiceSpec
from .dispatch import activation_of, apply_activation, check_tensors, dice, label_map, warn_ignored

Weight = Union[Sequence[float], float, int, Tensor, None]
REDUCTIONS = ("mean", "sum", "none")
W_TYPES = ("square", "simple", "uniform")
_SIGMOID_FOCAL = DiceSpec(activation="sigmoid")


def _choice(name: str, value, choices: tuple) -> str:
    value = getattr(value, "value", value)  # MONAI's StrEnum members
    if value not in choices:
        raise ValueError(f"Unsupported {name}: {value!r}, available options are {list(choices)}.")
    return value


def _as_weights(weight: Weight) -> Optional[Tensor]:
    return None if weight is None else torch.as_tensor(weight, dtype=torch.float64).detach().cpu()


class _RegionLoss(nn.Module):
    """MONAI's shared front end: activation, target encoding, background, weight and reduction.

    ``family`` holds the fixed ``DiceSpec`` fields of the subclass (Tversky weights, generalized
    weights, Jaccard, squared).
    """

    def __init__(self, include_background: bool, to_onehot_y: bool, sigmoid: bool, softmax: bool,
                 other_act: Optional[Callable], reduction, smooth_nr: float, smooth_dr: float, batch: bool,
                 soft_label: bool, ignore_index: Optional[int], weight: Weight = None, **family) -> None:
        super().__init__()
        self.reduction = _choice("reduction", reduction, REDUCTIONS)
        if other_act is not None and not callable(other_act):
            raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
        if int(sigmoid) + int(softmax) + int(other_act is not None) > 1:
            raise ValueError("Incompatible values: more than 1 of [sigmoid=True, softmax=True, other_act is not None].")
        activation = "sigmoid" if sigmoid else "softmax" if softmax else activation_of(other_act)
        # A callable that is none of the spec's activations is applied first, then scored as probabilities.
        self.other_act = other_act if activation is None else None
        self.to_onehot_y, self.batch = to_onehot_y, batch
        self.spec = DiceSpec(
            activation=activation or "none", smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr), batch=batch,
            include_background=include_background, ignore_index=ignore_index, soft_label=soft_label,
            reduction=self.reduction, **family,
        )
        self.class_weight = _as_weights(weight)
        self.specs_by_channels: dict = {}  # spec_for's answers: a DiceSpec is built once per channel count

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        check_tensors(input=input, target=target)
        return self.loss(input, self.target(input, target))

    def loss(self, input: Tensor, target: Tensor) -> Tensor:
        """The loss of a target already in the spec's encoding (``target()``)."""
        spec = self.spec_for(input.shape[1])
        if self.other_act is not None:
            input = apply_activation(self.other_act, input, "other_act")
        losses = dice(input, target, spec)
        if self.reduction == "none":
            return self.unreduced(losses[0] if self.batch else losses, input.ndim)  # batch Dice: no batch axis
        scale = self.mean_scale(spec)
        return losses if scale == 1 else losses * scale

    def target(self, input: Tensor, target: Tensor) -> Tensor:
        """The target in the spec's encoding: a label map for ``to_onehot_y``, else MONAI's dense one."""
        channels, ignore_index = input.shape[1], self.spec.ignore_index
        if target.ndim != input.ndim:
            raise ValueError(f"target must have the input's {input.ndim} dims (B, C or 1, *spatial), "
                             f"got shape {tuple(target.shape)}")
        if channels == 1 and self.to_onehot_y:
            warn_ignored("to_onehot_y=True")
        if channels > 1 and self.to_onehot_y:
            if target.shape[1] != 1:
                raise ValueError(
                    f"to_onehot_y=True needs a label map of shape (B, 1, *spatial), got {tuple(target.shape)}")
            return label_map(target, ignore_index)
        if channels == 1 and not target.is_floating_point():
            return target  # a {0, 1} label map of the single channel
        if target.shape != input.shape:
            raise ValueError(
                f"ground truth has different shape ({tuple(target.shape)}) from input ({tuple(input.shape)})")
        if ignore_index is not None:
            raise ValueError(
                "ignore_index with a one-hot or soft target is not supported here (MONAI masks by the target's "
                "values there); pass the label map (B, 1, *spatial) with to_onehot_y=True"
            )
        return target if target.is_floating_point() else target.to(input.dtype)

    def spec_for(self, channels: int) -> DiceSpec:
        """The spec for ``channels`` logits channels: MONAI ignores softmax and include_background=False
        for one channel (with its warning, every call), and applies ``weight`` only when more than one
        class is scored."""
        if channels == 1 and self.spec.activation == "softmax":
            warn_ignored("softmax=True")
        if channels == 1 and not self.spec.include_background:
            warn_ignored("include_background=False")
        if channels not in self.specs_by_channels:
            self.specs_by_channels[channels] = self.make_spec(channels)
        return self.specs_by_channels[channels]

    def make_spec(self, channels: int) -> DiceSpec:
        changes = {}
        if channels == 1 and self.spec.activation == "softmax":
            changes["activation"] = "none"
        if channels == 1 and not self.spec.include_background:
            changes["include_background"] = True
        kept = channels - (channels > 1 and not self.spec.include_background)
        if self.class_weight is not None and kept != 1:
            changes["weight"] = self.weights_for(channels, kept)
        return self.spec.replace(**changes) if changes else self.spec

    def weights_for(self, channels: int, kept: int) -> tuple:
        weight = self.class_weight
        if weight.ndim == 0:
            weight = weight.expand(kept)
        if weight.shape[0] != kept:
            raise ValueError(
                "The length of the `weight` sequence should be the same as the number of classes. "
                "If `include_background=False`, the weight should not include the background category class 0."
            )
        if weight.min() < 0:
            raise ValueError("the value/values of the `weight` should be no less than 0.")
        dropped = (1.0,) * (channels - kept)  # the background's entry, dropped with it by the spec
        return dropped + tuple(weight.tolist())

    def mean_scale(self, spec: DiceSpec) -> float:
        """MONAI's mean of ``w_c l_c`` over (units, K kept classes) over the spec's weighted mean:
        ``sum(w) / K`` (1 without weights, and for "sum", where the two agree)."""
        if self.reduction != "mean" or spec.weight is None:
            return 1.0
        kept = spec.weight[0 if spec.include_background else 1:]
        return sum(kept) / len(kept)

    def unreduced(self, f: Tensor, ndim: int) -> Tensor:
        return f.view(list(f.shape[0:2]) + [1] * (ndim - 2))  # MONAI keeps a broadcastable shape


class DiceLoss(_RegionLoss):
    """``monai.losses.DiceLoss``; ``reduction="none"`` gives ``(B, C, 1, ...)``, ``(C, 1, ...)`` with ``batch``."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction="mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Weight = None, soft_label: bool = False,
                 ignore_index: Optional[int] = None) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr,
                         smooth_dr, batch, soft_label, ignore_index, weight, squared=squared_pred, jaccard=jaccard)


class GeneralizedDiceLoss(_RegionLoss):
    """``monai.losses.GeneralizedDiceLoss``; ``reduction="none"`` gives ``(B, 1, 1, ...)``, ``(1, 1, ...)``
    with ``batch``."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, w_type="square", reduction="mean",
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 soft_label: bool = False) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr,
                         smooth_dr, batch, soft_label, None, generalized=_choice("w_type", w_type, W_TYPES))


class TverskyLoss(_RegionLoss):
    """``monai.losses.TverskyLoss``; ``reduction="none"`` gives ``(B, C)``, ``(C,)`` with ``batch``."""

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, alpha: float = 0.5, beta: float = 0.5,
                 reduction="mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                 soft_label: bool = False, ignore_index: Optional[int] = None) -> None:
        super().__init__(include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr,
                         smooth_dr, batch, soft_label, ignore_index, fp_weight=float(alpha), fn_weight=float(beta))

    def unreduced(self, f: Tensor, ndim: int) -> Tensor:
        return f


def _check_compound_inputs(input: Tensor, target: Tensor) -> None:
    check_tensors(input=input, target=target)
    if input.dim() != target.dim():
        raise ValueError(
            "the number of dimensions for input and target should be the same, "
            f"got shape {input.shape} (nb dims: {len(input.shape)}) and {target.shape} (nb dims: {len(target.shape)}). "
            "if target is not one-hot encoded, please provide a tensor with shape B1H[WD]."
        )
    if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
        raise ValueError(
            "number of channels for target is neither 1 (without one-hot encoding) nor the same as input, "
            f"got shape {input.shape} and {target.shape}."
        )


def _check_lambdas(**lambdas: float) -> None:
    for name, value in lambdas.items():
        if value < 0.0:
            raise ValueError(f"{name} should be no less than 0.0.")


class DiceCELoss(nn.Module):
    """``monai.losses.DiceCELoss``: ``lambda_dice * DiceLoss + lambda_ce * CE``, reduction "mean" or "sum".

    CE is ``F.cross_entropy`` on the label map (no one-hot) or on the one-hot / soft target, with
    ``weight`` and ``label_smoothing``; one channel: binary cross-entropy with ``pos_weight=weight``.
    The Dice part gets ``weight[1:]`` when ``include_background=False``, as in MONAI. An input
    without pixels (empty batch or spatial size) gives NaN with ``reduction="mean"``, MONAI's value
    (CE's mean over nothing).
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, weight: Optional[Tensor] = None, lambda_dice: float = 1.0,
                 lambda_ce: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__()
        reduction = _choice("reduction", reduction, ("mean", "sum"))
        check_label_smoothing(label_smoothing)
        weight = _as_weights(weight)
        dice_weight = weight[1:] if weight is not None and not include_background else weight
        self.dice = DiceLoss(include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard,
                             reduction, smooth_nr, smooth_dr, batch, weight=dice_weight)
        _check_lambdas(lambda_dice=lambda_dice, lambda_ce=lambda_ce)
        self.reduction, self.class_weight, self.label_smoothing = reduction, weight, label_smoothing
        self.lambda_dice, self.lambda_ce = lambda_dice, lambda_ce

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_compound_inputs(input, target)
        if target.shape[1] == 1 and input.shape[1] != 1 and target.is_floating_point():
            target = label_map(target)  # MONAI's CE takes .long() of a float label map; the Dice term reads it too
        if self.reduction == "mean" and input.numel() == 0:
            # MONAI's CE is torch's mean over no pixel, NaN (compound.cross_entropy gives 0 there)
            return self.lambda_dice * self.dice(input, target) + self.lambda_ce * float("nan")
        fused = self.fused(input, target)
        if fused is not None:
            return fused
        return self.lambda_dice * self.dice(input, target) + self.lambda_ce * self.ce(input, target)

    def fused(self, input: Tensor, target: Tensor) -> Optional[Tensor]:
        """Both terms in the fused kernels' two passes (``fused.compound_loss``, which asks
        ``fused.routing.fusion``), where MONAI's loss is a spec plus its cross-entropy term over the
        same logits: not with ``other_act`` (Dice reads other values than CE) or one channel (binary
        CE); None where the kernels cannot (float one-hot targets, sigmoid, "sum", ...)."""
        if self.dice.other_act is not None or input.shape[1] == 1:
            return None
        spec = self.dice.spec_for(input.shape[1])
        class_weight = None if self.class_weight is None else self.class_weight.reshape(-1).tolist()
        return fused_compound_loss(input, self.dice.target(input, target), spec,
                                   lambda_dice=self.lambda_dice * self.dice.mean_scale(spec),
                                   lambda_pixel=self.lambda_ce, class_weight=class_weight,
                                   label_smoothing=self.label_smoothing)

    def ce(self, input: Tensor, target: Tensor) -> Tensor:
        """MONAI's cross-entropy term of ``(input, target)`` (binary for one channel)."""
        weight = None if self.class_weight is None else self.class_weight.to(input.device)  # cast where computed
        if input.shape[1] == 1:
            return binary_cross_entropy(input, target.to(input.dtype), pos_weight=weight, reduction=self.reduction)
        if target.shape[1] == 1:
            return cross_entropy(input, target[:, 0], weight=weight, label_smoothing=self.label_smoothing,
                                 reduction=self.reduction)
        dense = target if target.is_floating_point() else target.to(input.dtype)
        return cross_entropy(input, dense, weight=weight, label_smoothing=self.label_smoothing,
                             reduction=self.reduction)


class DiceFocalLoss(nn.Module):
    """``monai.losses.DiceFocalLoss``: ``lambda_dice * DiceLoss + lambda_focal * FocalLoss``.

    As in MONAI the focal term is the sigmoid (per-channel) focal loss whatever ``softmax`` says,
    computed in float32, with ``weight`` per kept class and ``alpha`` for the positives; its
    ``reduction="sum"`` sums the per-(image, class) spatial means, ``"none"`` is ``(B, C, *spatial)``
    (the Dice term's ``(B, C, 1, ...)`` broadcasts onto it).
    """

    def __init__(self, include_background: bool = True, to_onehot_y: bool = False, sigmoid: bool = False,
                 softmax: bool = False, other_act: Optional[Callable] = None, squared_pred: bool = False,
                 jaccard: bool = False, reduction: str = "mean", smooth_nr: float = 1e-5, smooth_dr: float = 1e-5,
                 batch: bool = False, gamma: float = 2.0, weight: Weight = None, lambda_dice: float = 1.0,
                 lambda_focal: float = 1.0, alpha: Optional[float] = None) -> None:
        super().__init__()
        self.dice = DiceLoss(include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard,
                             reduction, smooth_nr, smooth_dr, batch, weight=weight)
        _check_lambdas(lambda_dice=lambda_dice, lambda_focal=lambda_focal)
        self.include_background, self.to_onehot_y = include_background, to_onehot_y
        self.reduction, self.gamma, self.alpha = self.dice.reduction, gamma, alpha
        self.class_weight = _as_weights(weight)
        self.lambda_dice, self.lambda_focal = lambda_dice, lambda_focal

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        _check_compound_inputs(input, target)
        target = self.dice.target(input, target)
        dice_loss = self.dice.loss(input, target)  # validates the target before the focal term reads it
        return self.lambda_dice * dice_loss + self.lambda_focal * self.focal(input, target)

    def focal(self, input: Tensor, target: Tensor) -> Tensor:
        """MONAI's sigmoid ``FocalLoss`` of ``input`` against the Dice term's target encoding."""
        channels = input.shape[1]
        if not target.is_floating_point() and target.ndim == input.ndim:
            target = target[:, 0]  # the label map; the focal term builds its per-channel targets from it
        drop = channels > 1 and not self.include_background
        if channels == 1 and not self.include_background:
            warn_ignored("include_background=False")
        per_value = focal_loss(input.float(), target, _SIGMOID_FOCAL, gamma=self.gamma, alpha=self.alpha,
                               weight=self.focal_weights(channels, drop), reduction="none")
        if drop:
            per_value = per_value[:, 1:]
        if self.reduction == "mean":
            return per_value.mean()
        if self.reduction == "sum":
            return per_value.mean(dim=list(range(2, per_value.ndim))).sum()
        return per_value

    def focal_weights(self, channels: int, drop: bool) -> Optional[Tensor]:
        weight = self.class_weight
        if weight is None:
            return None
        kept = channels - drop
        if weight.ndim > 0:
            if kept == 1:
                raise ValueError("Per-class class_weight is not supported for single-channel outputs.")
            if weight.numel() != kept:
                raise ValueError(f"The number of class_weight ({weight.numel()}) must match the number of "
                                 f"output channels ({kept}).")
        if (weight < 0).any():
            raise ValueError("class_weight values must be non-negative.")
        weight = weight.expand(kept).float()
        return torch.cat([weight.new_ones(1), weight]) if drop else weight
