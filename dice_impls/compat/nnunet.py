"""nnU-Net v2.8's Dice losses as drop-ins: ``from dice_impls.compat.nnunet import DC_and_CE_loss``.

``MemoryEfficientSoftDiceLoss`` and ``SoftDiceLoss`` (``nnunetv2.training.loss.dice``) and
``DC_and_CE_loss`` (``nnunetv2.training.loss.compound_losses``) with nnU-Net's arguments and
defaults: ``smooth=1`` in both numerator and denominator, the denominator clipped at 1e-8, the
loss ``-mean(dice)`` over the kept classes (and images, without ``batch_dice``). ``x``: logits
``(b, c, *spatial)``; ``y``: a label map ``(b, 1, *spatial)`` or ``(b, *spatial)`` (any integer or
float dtype, as nnU-Net's ``.long()`` reads it) or a one-hot ``(b, c, *spatial)``; ``loss_mask``
``(b, 1, *spatial)`` of 0/1 excludes pixels from every sum.
docs/conventions.md "Drop-in classes" lists the mapping and the divergences.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from ..checks import check_class_weight, check_label_smoothing
from ..compound import cross_entropy
from ..distributed import global_dice_loss, is_distributed
from ..fused import compound_loss as fused_compound_loss
from ..spec import DiceSpec
from .dispatch import activation_of, apply_activation, check_tensors, dice, implementation_for, label_map

_MASKED = -1  # the label given to pixels that loss_mask excludes (never a class)
CE_ARGUMENTS = ("weight", "ignore_index", "reduction", "label_smoothing")


def softmax_helper_dim1(x: Tensor) -> Tensor:
    """nnU-Net's ``softmax_helper_dim1``: softmax over the channels."""
    return torch.softmax(x, 1)


class _SoftDice(nn.Module):
    def __init__(self, apply_nonlin: Optional[Callable], batch_dice: bool, do_bg: bool, smooth: float,
                 ddp: bool) -> None:
        super().__init__()
        activation = activation_of(apply_nonlin)
        self.apply_nonlin = apply_nonlin if activation is None else None  # applied, then scored as probabilities
        self.batch_dice, self.ddp = batch_dice, ddp
        self.spec = DiceSpec(activation=activation or "none", smooth_nr=float(smooth), smooth_dr=float(smooth),
                             batch=batch_dice, include_background=do_bg, min_denominator=1e-8, negate=True)
        self.specs_by_ignored: dict = {None: self.spec}  # spec_ignoring's answers, built once each

    def forward(self, x: Tensor, y: Tensor, loss_mask: Optional[Tensor] = None) -> Tensor:
        check_tensors(x=x, y=y, **({} if loss_mask is None else {"loss_mask": loss_mask}))
        target, ignore_index = self.target(x, y, loss_mask)
        return self.loss(x, target, ignore_index)

    def loss(self, x: Tensor, target: Tensor, ignore_index: Optional[int]) -> Tensor:
        """The loss of a target in the spec's encoding, pixels labelled ``ignore_index`` excluded."""
        spec = self.spec_ignoring(ignore_index)
        if self.apply_nonlin is not None:
            x = apply_activation(self.apply_nonlin, x, "apply_nonlin")
        if self.ddp and self.batch_dice and is_distributed():
            # nnU-Net all-gathers the batch sums; global_dice_loss all-reduces them (same value on every rank).
            return global_dice_loss(x, target, spec, impl=implementation_for(target))
        return dice(x, target, spec)

    def spec_ignoring(self, ignore_index: Optional[int]) -> DiceSpec:
        """The spec with ``ignore_index`` (a mask's or ``DC_and_CE_loss``'s ignore label)."""
        if ignore_index not in self.specs_by_ignored:
            self.specs_by_ignored[ignore_index] = self.spec.replace(ignore_index=ignore_index)
        return self.specs_by_ignored[ignore_index]

    @staticmethod
    def target(x: Tensor, y: Tensor, loss_mask: Optional[Tensor]):
        """``(target, ignore_index)``: a label map (masked pixels labelled ``_MASKED``) or a one-hot.

        With one channel a y of x's shape is both; with ``loss_mask`` it is read as the label map
        (0/1), which the mask can label."""
        binary_with_mask = x.shape[1] == 1 and loss_mask is not None
        if y.shape == x.shape and not binary_with_mask:  # one-hot
            if loss_mask is not None:
                raise ValueError(f"loss_mask with a one-hot y {tuple(y.shape)} is not supported here; pass the label "
                                 f"map of shape (b, 1, *spatial) = {(x.shape[0], 1, *x.shape[2:])}")
            return (y if y.is_floating_point() else y.to(x.dtype)), None
        if binary_with_mask and y.is_floating_point() and not bool(((y == 0) | (y == 1)).all()):
            raise ValueError("with one channel and loss_mask, y must hold 0 and 1 only (a soft y with loss_mask is "
                             "not supported here)")
        labels = label_map(y)
        if loss_mask is None:
            return labels, None
        if loss_mask.shape != (x.shape[0], 1, *x.shape[2:]):
            raise ValueError(f"loss_mask must have shape (b, 1, *spatial) = {(x.shape[0], 1, *x.shape[2:])}, "
                             f"got {tuple(loss_mask.shape)}")
        if not ((loss_mask == 0) | (loss_mask == 1)).all():
            raise ValueError("loss_mask must hold 0 (excluded) and 1 (counted) only")
        labels = labels if labels.ndim == x.ndim else labels.unsqueeze(1)
        return torch.where(loss_mask.bool(), labels.long(), _MASKED), _MASKED


class MemoryEfficientSoftDiceLoss(_SoftDice):
    """``nnunetv2.training.loss.dice.MemoryEfficientSoftDiceLoss``."""

    def __init__(self, apply_nonlin: Optional[Callable] = None, batch_dice: bool = False, do_bg: bool = True,
                 smooth: float = 1.0, ddp: bool = True) -> None:
        super().__init__(apply_nonlin, batch_dice, do_bg, smooth, ddp)


class SoftDiceLoss(_SoftDice):
    """``nnunetv2.training.loss.dice.SoftDiceLoss``; ``clip_tp`` (a floor on the intersection) is refused."""

    def __init__(self, apply_nonlin: Optional[Callable] = None, batch_dice: bool = False, do_bg: bool = True,
                 smooth: float = 1.0, ddp: bool = True, clip_tp: Optional[float] = None) -> None:
        if clip_tp is not None:
            raise ValueError("SoftDiceLoss(clip_tp=...) is not supported: the spec has no floor on the intersection; "
                             "use clip_tp=None or nnunetv2's SoftDiceLoss")
        super().__init__(apply_nonlin, batch_dice, do_bg, smooth, ddp)


class DC_and_CE_loss(nn.Module):  # noqa: N801 (nnU-Net's name)
    """``nnunetv2.training.loss.compound_losses.DC_and_CE_loss``: ``weight_ce * CE + weight_dice * Dice``.

    ``dice_class``: this module's ``SoftDiceLoss`` or ``MemoryEfficientSoftDiceLoss`` (nnU-Net's
    classes of those names are mapped to them). ``ce_kwargs`` are ``nn.CrossEntropyLoss``'s
    ``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``; CE runs on the label map without
    a one-hot. With ``ignore_label`` its pixels leave both terms, and a batch without a counted pixel
    has CE 0. A zero term weight skips that term, as in nnU-Net. Softmax Dice and a mean CE that
    ignores the same label run in the fused kernels' two passes (``fused``).
    """

    def __init__(self, soft_dice_kwargs: dict, ce_kwargs: dict, weight_ce: float = 1, weight_dice: float = 1,
                 ignore_label: Optional[int] = None, dice_class=SoftDiceLoss) -> None:
        super().__init__()
        unknown = sorted(set(ce_kwargs) - set(CE_ARGUMENTS))
        if unknown:
            raise ValueError(f"ce_kwargs {unknown} are not supported; supported: {list(CE_ARGUMENTS)}")
        self.ce_kwargs = dict(ce_kwargs)  # nnU-Net writes ignore_index into the caller's dict; this copy does not
        if ignore_label is not None:
            self.ce_kwargs["ignore_index"] = ignore_label
        weight = self.ce_kwargs.get("weight")
        self.ce_kwargs["weight"] = None if weight is None else torch.as_tensor(weight, dtype=torch.float64)
        check_label_smoothing(float(self.ce_kwargs.get("label_smoothing", 0.0)))
        self.weight_dice, self.weight_ce, self.ignore_label = weight_dice, weight_ce, ignore_label
        self.dc = _dice_class(dice_class)(apply_nonlin=softmax_helper_dim1, **soft_dice_kwargs)

    def forward(self, net_output: Tensor, target: Tensor) -> Tensor:
        check_tensors(net_output=net_output, target=target)
        if target.ndim != net_output.ndim or target.shape[1] != 1:
            raise ValueError(f"target must be a label map of shape (b, 1, *spatial), got {tuple(target.shape)} "
                             "(nnU-Net's cross-entropy and ignore label take no one-hot target)")
        if self.ce_kwargs["weight"] is not None:
            check_class_weight(self.ce_kwargs["weight"], net_output.shape[1], "ce_kwargs['weight']")
        labels = label_map(target, self.ignore_label)
        fused = self.fused(net_output, labels)
        if fused is not None:
            return fused
        dc_loss = self.dc.loss(net_output, labels, self.ignore_label) if self.weight_dice != 0 else 0
        ce_loss = self.ce(net_output, labels[:, 0]) if self.weight_ce != 0 else 0
        return self.weight_ce * ce_loss + self.weight_dice * dc_loss

    def fused(self, net_output: Tensor, labels: Tensor) -> Optional[Tensor]:
        """Both terms in the fused kernels' two passes (``fused.compound_loss``, which asks
        ``fused.routing.fusion``) where nnU-Net's loss is a spec plus its cross-entropy term: both
        weights nonzero (nnU-Net skips a zero-weighted term), a mean CE ignoring the Dice's ignored
        label (or, without ``ignore_label``, only CE's default -100, which no valid label map holds),
        no DDP all-gather; None elsewhere and where the kernels cannot (a Dice activation other than
        softmax, one channel, ...)."""
        ce_ignore = self.ce_kwargs.get("ignore_index", -100)
        same_ignored = ce_ignore == self.ignore_label or (self.ignore_label is None and ce_ignore == -100)
        if (self.weight_dice == 0 or self.weight_ce == 0 or self.ce_kwargs.get("reduction", "mean") != "mean"
                or not same_ignored or (self.dc.ddp and self.dc.batch_dice and is_distributed())):
            return None
        spec = self.dc.spec_ignoring(self.ignore_label)
        weight = self.ce_kwargs["weight"]
        return fused_compound_loss(net_output, labels, spec, lambda_dice=self.weight_dice, lambda_pixel=self.weight_ce,
                                   class_weight=None if weight is None else weight.tolist(),
                                   label_smoothing=float(self.ce_kwargs.get("label_smoothing", 0.0)))

    def ce(self, net_output: Tensor, labels: Tensor) -> Tensor:
        kwargs = dict(self.ce_kwargs)
        if kwargs["weight"] is not None:
            kwargs["weight"] = kwargs["weight"].to(net_output.device)  # cast to the dtype CE is computed in
        return cross_entropy(net_output, labels, **kwargs)


def _dice_class(cls):
    ours = {"SoftDiceLoss": SoftDiceLoss, "MemoryEfficientSoftDiceLoss": MemoryEfficientSoftDiceLoss}
    name = getattr(cls, "__name__", None)
    if name not in ours:
        raise ValueError(f"dice_class must be SoftDiceLoss or MemoryEfficientSoftDiceLoss, got {cls!r}")
    return ours[name]
