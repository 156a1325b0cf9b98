"""Every drop-in option that maps onto the folded C++ operator reaches it: one call of
``torch.ops.dice_fused.eager_loss`` per forward (counted by a spy), with the peer's value.

The peers' values are checked at large in test_compat.py and test_conformance.py; here a spy
proves that the one-line switch is the fast path (``folded_calls``: tests/conftest.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch

from dice_impls.compat import monai as ours_monai
from dice_impls.compat import nnunet as ours_nnunet
from dice_impls.compat import smp as ours_smp

monai_losses = pytest.importorskip("monai.losses")
nnunet_dice = pytest.importorskip("nnunetv2.training.loss.dice")
nnunet_compound = pytest.importorskip("nnunetv2.training.loss.compound_losses")


def inputs(channels=3, shape=(2, 6, 7), seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((shape[0], channels, *shape[1:]), generator=gen) * 2
    labels = torch.randint(0, max(channels, 2), (shape[0], 1, *shape[1:]), generator=gen)
    return logits, labels


MONAI_REGION = [
    ("DiceLoss", dict(softmax=True)),
    ("DiceLoss", dict(softmax=True, include_background=False, batch=True)),
    ("DiceLoss", dict(sigmoid=True, reduction="sum", squared_pred=True)),
    ("DiceLoss", dict(softmax=True, reduction="none", jaccard=True)),
    ("DiceLoss", dict(softmax=True, weight=[0.5, 2.0, 1.0])),
    ("DiceLoss", dict(softmax=True, include_background=False, weight=[2.0, 1.0], reduction="none")),
    ("DiceLoss", dict(softmax=True, ignore_index=2, smooth_nr=0.0, smooth_dr=1e-6)),
    ("DiceLoss", dict(other_act=torch.nn.Softmax(dim=1), batch=True, reduction="none")),
    ("DiceLoss", dict()),
    ("GeneralizedDiceLoss", dict(softmax=True)),
    ("GeneralizedDiceLoss", dict(softmax=True, w_type="simple", batch=True, reduction="none")),
    ("GeneralizedDiceLoss", dict(sigmoid=True, w_type="uniform", include_background=False, reduction="sum")),
    ("TverskyLoss", dict(softmax=True, alpha=0.3, beta=0.7)),
    ("TverskyLoss", dict(softmax=True, batch=True, reduction="none", include_background=False)),
]


@pytest.mark.parametrize("name, kwargs", MONAI_REGION, ids=lambda v: str(v))
def test_monai_region_losses_reach_the_folded_operator(name, kwargs, folded_calls):
    logits, labels = inputs()
    ours_input, theirs_input = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = getattr(ours_monai, name)(to_onehot_y=True, **kwargs)(ours_input, labels)
    theirs = getattr(monai_losses, name)(to_onehot_y=True, **kwargs)(theirs_input, labels)
    assert len(folded_calls) == 1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_input.grad, theirs_input.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kwargs", [
    dict(), dict(include_background=False, batch=True), dict(weight=torch.tensor([0.5, 2.0, 1.0]), label_smoothing=0.1),
    dict(include_background=False, weight=torch.tensor([1.0, 2.0, 3.0]), lambda_dice=0.5, lambda_ce=2.0),
], ids=str)
def test_monai_dice_ce_reaches_the_folded_operator(kwargs, folded_calls):
    logits, labels = inputs(seed=1)
    ours = ours_monai.DiceCELoss(to_onehot_y=True, softmax=True, **kwargs)(logits, labels)
    theirs = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, **kwargs)(logits, labels)
    assert len(folded_calls) == 1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_monai_dice_focal_dice_term_reaches_the_folded_operator(folded_calls):
    logits, labels = inputs(seed=2)
    ours = ours_monai.DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=2.0)(logits, labels)
    theirs = monai_losses.DiceFocalLoss(to_onehot_y=True, softmax=True, gamma=2.0)(logits, labels)
    assert len(folded_calls) == 1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["MemoryEfficientSoftDiceLoss", "SoftDiceLoss"])
@pytest.mark.parametrize("kwargs, masked", [
    (dict(batch_dice=True, do_bg=False, smooth=1e-5), False), (dict(), False), (dict(batch_dice=True), True),
], ids=str)
def test_nnunet_dice_reaches_the_folded_operator(name, kwargs, masked, folded_calls):
    logits, labels = inputs(seed=3)
    mask = (torch.rand(labels.shape, generator=torch.Generator().manual_seed(4)) > 0.2).float() if masked else None
    ours = getattr(ours_nnunet, name)(apply_nonlin=ours_nnunet.softmax_helper_dim1, ddp=False, **kwargs)
    theirs = getattr(nnunet_dice, name)(apply_nonlin=torch.nn.Softmax(dim=1), ddp=False, **kwargs)
    got, want = ours(logits, labels, loss_mask=mask), theirs(logits, labels, loss_mask=mask)
    assert len(folded_calls) == 1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ce_kwargs, ignore_label", [
    ({}, None), ({"weight": torch.tensor([0.5, 1.0, 2.0]), "label_smoothing": 0.1}, None), ({}, 2),
], ids=str)
def test_nnunet_dc_and_ce_reaches_the_folded_operator(ce_kwargs, ignore_label, folded_calls):
    logits, labels = inputs(seed=5)
    dice_kwargs = dict(batch_dice=True, smooth=1e-5, do_bg=False, ddp=False)
    ours = ours_nnunet.DC_and_CE_loss(dice_kwargs, dict(ce_kwargs), ignore_label=ignore_label,
                                      dice_class=ours_nnunet.MemoryEfficientSoftDiceLoss)(logits, labels)
    theirs = nnunet_compound.DC_and_CE_loss(dice_kwargs, dict(ce_kwargs), ignore_label=ignore_label,
                                            dice_class=nnunet_dice.MemoryEfficientSoftDiceLoss)(logits, labels)
    assert len(folded_calls) == 1
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name, kwargs", [
    ("DiceLoss", dict(mode="multiclass")), ("DiceLoss", dict(mode="multiclass", log_loss=True, classes=[1, 2])),
    ("JaccardLoss", dict(mode="multiclass", ignore_index=2)),
    ("TverskyLoss", dict(mode="multiclass", alpha=0.3, beta=0.7, gamma=1.5, class_weights=[1.0, 2.0, 0.5])),
    ("DiceLoss", dict(mode="binary")),
], ids=str)
def test_smp_losses_reach_the_folded_operator(name, kwargs, folded_calls):
    binary = kwargs["mode"] == "binary"
    logits, labels = inputs(channels=1 if binary else 3, seed=6)
    loss = getattr(ours_smp, name)(**kwargs)(logits, labels[:, 0])
    assert len(folded_calls) == 1 and torch.isfinite(loss)


def test_float_one_hot_targets_do_not_reach_it(folded_calls):
    logits, labels = inputs(seed=7)
    one_hot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours_monai.DiceLoss(softmax=True)(logits, one_hot)
        ours_monai.DiceCELoss(softmax=True)(logits, one_hot)
    assert not folded_calls  # the dense implementation ("mixed") takes float targets
