"""The drop-in classes of ``dice_impls.compat`` against the peers: MONAI and nnU-Net as installed,
segmentation_models_pytorch as re-stated in tests/peers/smp.py.

Each hypothesis test draws an option combination, a 2-D or 3-D shape and float32 or bfloat16
logits, runs our class and the peer's on the same inputs and compares the loss (value and shape)
and the gradient with respect to the logits. bfloat16 logits are compared with the peer run on the
same values in float32 (the peers compute in the input's dtype; ours in float32 or wider), within
the stated half-precision tolerances. Examples are bounded and derandomized so the file takes
well under two minutes on one core. ``DICEBENCH_CONFORMANCE_TABLE=1`` prints the worst differences
per peer class at the end (the conformance table of docs/conventions.md).
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import monai.losses as monai_losses  # dev dependency: an import error here is a failure, not a skip
import nnunetv2.training.loss.compound_losses as nnunet_compound  # installed by `make install` (--no-deps)
import nnunetv2.training.loss.dice as nnunet_dice
from nnunetv2.utilities.helpers import softmax_helper_dim1

from dice_impls.compat import monai as ours_monai
from dice_impls.compat import nnunet as ours_nnunet
from dice_impls.compat import smp as ours_smp
from dice_impls.compat.dispatch import implementation_for
from helpers import error
from peers.smp import smp_dice_loss, smp_jaccard_loss, smp_tversky_loss

EXAMPLES = 25
HYPOTHESIS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# error() of helpers.py: max|ours - peer| / max(max|peer|, floor), floor 1 for losses (absolute
# below 1) and the smallest normal float32 for gradients. Worst measured over every example of
# this file (torch 2.13.0 CPU) in the comments. bfloat16: label maps run "fused" (float32
# arithmetic, the gradient rounded to bfloat16), float targets "mixed" (bfloat16 activations and
# products, float32 sums), which keeps helpers.TOLERANCES' bounds against the float64 reference.
# float32 losses: the peer's own rounding reaches 2.1e-6 (smp log_loss at logits of 19, 2.1e-6 off
# smp run in float64, where ours is 1e-8 off), hence 5e-6.
TOLERANCE = {
    ("fused", torch.float32): dict(loss=5e-6, grad=2e-5),    # 3.6e-7, 7.8e-7
    ("mixed", torch.float32): dict(loss=5e-6, grad=2e-5),    # 7.5e-7, 1.0e-6
    ("fused", torch.bfloat16): dict(loss=1e-5, grad=2e-2),   # 2.4e-7, 4.5e-3
    ("mixed", torch.bfloat16): dict(loss=8e-3, grad=2e-1),   # 3.4e-4, 1.0e-2 (helpers' mixed bfloat16 bounds)
}
# peer class -> [examples, loss error, gradient error, max |loss difference|, max |gradient difference|]
WORST = collections.defaultdict(lambda: [0, 0.0, 0.0, 0.0, 0.0])


@pytest.fixture(scope="module", autouse=True)
def conformance_table():
    yield
    if os.environ.get("DICEBENCH_CONFORMANCE_TABLE"):
        print("\npeer class | examples | loss error | gradient error | max abs loss diff | max abs gradient diff")
        for name, (count, *worst) in sorted(WORST.items()):
            print(f"{name} | {count} | " + " | ".join(f"{value:.2g}" for value in worst))


def compare(name, ours, peer, logits, dtype, *args):
    """Run ``ours`` on ``logits`` in ``dtype`` and ``peer`` on the same values in float32; assert
    equal shapes, loss and gradient within TOLERANCE[dtype]."""
    target = args[0]
    dense = target.is_floating_point() and (target.ndim != logits.ndim or target.shape[1] == logits.shape[1])
    x = logits.to(dtype).requires_grad_()
    x_peer = logits.to(dtype).float().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both sides warn alike for single-channel inputs
        loss = ours(x, *args)
        peer_loss = peer(x_peer, *args)
    assert loss.shape == peer_loss.shape, f"{name}: shape {tuple(loss.shape)} vs the peer's {tuple(peer_loss.shape)}"
    (grad,) = torch.autograd.grad(loss.sum(), x)
    (peer_grad,) = torch.autograd.grad(peer_loss.sum(), x_peer)
    assert grad.dtype == dtype
    errors = error(loss, peer_loss, 1.0), error(grad, peer_grad, torch.finfo(torch.float32).tiny)
    record = WORST[f"{name} ({'float32' if dtype == torch.float32 else 'bfloat16'}, {'mixed' if dense else 'fused'})"]
    absolute = tuple((a.double() - b.double()).abs().max().item() for a, b in ((loss, peer_loss), (grad, peer_grad)))
    record[0] += 1
    record[1:] = [max(old, new) for old, new in zip(record[1:], errors + absolute)]
    tol = TOLERANCE[("mixed" if dense else "fused", dtype)]
    assert errors[0] <= tol["loss"], f"{name}: loss error {errors[0]:.3g} (ours {loss}, peer {peer_loss})"
    assert errors[1] <= tol["grad"], f"{name}: gradient error {errors[1]:.3g}"
    assert peer_grad.abs().max() > 0  # a zero gradient would prove nothing about the backward pass


# ------------------------------------------------------------------------------------------ drawing

@st.composite
def problems(draw, min_channels=1, max_channels=4):
    """``(logits float64 (N, C, *spatial), labels int64 (N, *spatial), dtype)``, 2-D or 3-D, one
    class often absent, logits of scale up to 6."""
    channels = draw(st.integers(min_channels, max_channels))
    spatial = draw(st.sampled_from([(5, 7), (6, 4), (4, 3, 5), (3, 4, 3)]))
    images = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((images, channels, *spatial), generator=gen, dtype=torch.float64)
    logits = logits * draw(st.sampled_from([1.0, 3.0, 6.0]))
    classes = 2 if channels == 1 else channels
    labels = torch.randint(classes, (images, *spatial), generator=gen)
    if classes > 2 and draw(st.booleans()):
        labels[labels == classes - 1] = 0  # an absent class
    dtype = draw(st.sampled_from([torch.float32, torch.float32, torch.bfloat16]))
    return logits, labels, dtype


def with_ignored(labels, value, fraction, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(labels.shape, generator=gen) < fraction, value, labels)


def one_hot(labels, channels):
    return F.one_hot(labels, channels).movedim(-1, 1).float()


SMOOTH = st.sampled_from([1e-5, 1e-3, 1.0])


# --------------------------------------------------------------------------------------------- MONAI

@st.composite
def monai_region_case(draw, kind):
    logits, labels, dtype = draw(problems())
    channels = logits.shape[1]
    generic = channels > 1 and dtype == torch.float32  # a user's callable would run in bfloat16 on both sides
    activations = ["softmax", "sigmoid"] + ["other_act"] * generic if channels > 1 else ["sigmoid"]
    activation = draw(st.sampled_from(activations))
    act = dict(softmax=activation == "softmax", sigmoid=activation == "sigmoid")
    if activation == "other_act":  # a callable the spec does not know: applied, then scored as probabilities
        act["other_act"] = lambda x: torch.softmax(2 * x, 1)
    kwargs = dict(include_background=draw(st.booleans()), reduction=draw(st.sampled_from(["mean", "sum", "none"])),
                  smooth_nr=draw(SMOOTH), smooth_dr=draw(SMOOTH), batch=draw(st.booleans()),
                  soft_label=draw(st.booleans()), **act)
    label_target = channels > 1 and draw(st.booleans())
    if label_target:
        kwargs["to_onehot_y"] = True
        target = labels.unsqueeze(1).to(draw(st.sampled_from([torch.int64, torch.uint8, torch.float32])))
        if kind != "generalized" and draw(st.booleans()):
            ignore = draw(st.sampled_from([255, 0, channels - 1]))
            kwargs["ignore_index"] = ignore
            target = with_ignored(target.long(), ignore, 0.2, labels.numel()).to(target.dtype)
    elif channels == 1:  # MONAI's norms (squared_pred, soft_label) take float targets only
        target = labels.unsqueeze(1).float()
    elif kwargs["soft_label"] and dtype == torch.float32 and draw(st.booleans()):
        # Soft targets in float32 only: the soft overlap min(p, g) has a kink at p = g, and a half p
        # within its rounding of g takes the other side of it than MONAI's float32 p (the whole
        # gradient of that pixel flips); half logits are compared on hard targets, where p < g = 1.
        target = torch.softmax(torch.randn(logits.shape, generator=torch.Generator().manual_seed(labels.numel())), 1)
    else:
        target = one_hot(labels, channels)
    kept = channels - (channels > 1 and not kwargs["include_background"])
    if kind == "dice":
        kwargs.update(squared_pred=draw(st.booleans()), jaccard=draw(st.booleans()))
        weight = draw(st.sampled_from(["none", "scalar", "list"]))
        if weight == "scalar":
            kwargs["weight"] = 1.5
        elif weight == "list":
            kwargs["weight"] = [draw(st.floats(0.1, 3.0)) for _ in range(kept)]
    elif kind == "tversky":
        kwargs.update(alpha=draw(st.floats(0.1, 1.0)), beta=draw(st.floats(0.1, 1.0)))
    else:
        kwargs.pop("ignore_index", None)
        kwargs["w_type"] = draw(st.sampled_from(["square", "simple", "uniform"]))
    # The one kept class is the ignored label (two channels, no background, ignore_index=1): its
    # target is empty and the true gradient ~1e-9 (smooth_nr). MONAI's norm formula (soft_label,
    # squared_pred) gets it in float32 as the difference of two terms of ~0.03, so the peer's
    # gradient is its own rounding (0.35 relative off MONAI run in float64; ours is 9e-7 off that).
    assume(not (channels == 2 and not kwargs["include_background"] and kwargs.get("ignore_index") == 1
                and (kwargs["soft_label"] or kwargs.get("squared_pred"))))
    return logits, target, dtype, kwargs


@st.composite
def monai_compound_case(draw, kind):
    logits, labels, dtype = draw(problems())
    channels = logits.shape[1]
    activation = draw(st.sampled_from(["softmax", "sigmoid"] if channels > 1 else ["sigmoid"]))
    kwargs = dict(include_background=draw(st.booleans()), squared_pred=draw(st.booleans()),
                  jaccard=draw(st.booleans()), smooth_nr=draw(SMOOTH), smooth_dr=draw(SMOOTH),
                  batch=draw(st.booleans()), lambda_dice=draw(st.sampled_from([1.0, 0.4, 0.0])),
                  softmax=activation == "softmax", sigmoid=activation == "sigmoid")
    if channels > 1 and draw(st.booleans()):
        kwargs["to_onehot_y"] = True
        target = labels.unsqueeze(1).to(draw(st.sampled_from([torch.int64, torch.float32])))
    elif channels == 1:
        target = labels.unsqueeze(1).float()
    else:
        target = one_hot(labels, channels)
    kept = channels - (channels > 1 and not kwargs["include_background"])
    if kind == "ce":
        kwargs.update(reduction=draw(st.sampled_from(["mean", "sum"])), lambda_ce=draw(st.sampled_from([1.0, 1.7])),
                      label_smoothing=draw(st.sampled_from([0.0, 0.1])) if channels > 1 else 0.0)
        if draw(st.booleans()) and (kept > 1 or channels == 1):
            kwargs["weight"] = torch.tensor([draw(st.floats(0.2, 3.0)) for _ in range(channels)])
    else:
        kwargs.update(reduction=draw(st.sampled_from(["mean", "sum", "none"])), gamma=draw(st.floats(0.0, 3.0)),
                      lambda_focal=draw(st.sampled_from([1.0, 0.6])),
                      alpha=draw(st.one_of(st.none(), st.floats(0.05, 0.95))))
        if kept > 1 and draw(st.booleans()):
            kwargs["weight"] = [draw(st.floats(0.2, 3.0)) for _ in range(kept)]
    return logits, target, dtype, kwargs


MONAI_CASES = {"DiceLoss": (monai_region_case, "dice"), "TverskyLoss": (monai_region_case, "tversky"),
               "GeneralizedDiceLoss": (monai_region_case, "generalized"),
               "DiceCELoss": (monai_compound_case, "ce"), "DiceFocalLoss": (monai_compound_case, "focal")}


@pytest.mark.parametrize("name", list(MONAI_CASES))
@HYPOTHESIS
@given(data=st.data())
def test_monai_losses(name, data):
    strategy, kind = MONAI_CASES[name]
    logits, target, dtype, kwargs = data.draw(strategy(kind))
    ours, peer = getattr(ours_monai, name)(**kwargs), getattr(monai_losses, name)(**kwargs)
    compare(f"monai.{name}", ours, peer, logits, dtype, target)


@pytest.mark.parametrize("spatial", [(6, 5), (4, 3, 5)])
@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("name", ["DiceLoss", "TverskyLoss", "GeneralizedDiceLoss", "DiceFocalLoss", "DiceCELoss"])
def test_monai_output_shapes(name, reduction, batch, spatial):
    """Every reduction's output shape equals MONAI's (DiceCELoss refuses "none" like MONAI)."""
    logits = torch.randn(2, 3, *spatial)
    labels = torch.randint(3, (2, 1, *spatial))
    kwargs = dict(softmax=True, to_onehot_y=True, reduction=reduction, batch=batch)
    if name == "DiceCELoss" and reduction == "none":
        with pytest.raises(ValueError):
            monai_losses.DiceCELoss(**kwargs)
        with pytest.raises(ValueError, match="reduction"):
            ours_monai.DiceCELoss(**kwargs)
        return
    got = getattr(ours_monai, name)(**kwargs)(logits, labels)
    want = getattr(monai_losses, name)(**kwargs)(logits, labels)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_monai_refusals():
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(3, (2, 1, 4, 4))
    # an activation with values outside [0, 1] is scored by MONAI's formula, negative denominators too
    torch.testing.assert_close(ours_monai.DiceLoss(other_act=torch.tanh, to_onehot_y=True)(logits, labels),
                               monai_losses.DiceLoss(other_act=torch.tanh, to_onehot_y=True)(logits, labels),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="other_act must be None or callable"):
        ours_monai.DiceLoss(other_act="tanh")
    with pytest.raises(ValueError, match="Incompatible values"):
        ours_monai.DiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError, match="ignore_index with a one-hot"):
        ours_monai.DiceLoss(softmax=True, ignore_index=1)(logits, one_hot(labels[:, 0], 3))
    with pytest.raises(ValueError, match="different shape"):
        ours_monai.DiceLoss(softmax=True)(logits, labels)
    with pytest.raises(ValueError, match="lambda_ce should be no less than 0.0"):
        ours_monai.DiceCELoss(lambda_ce=-1.0)


def test_monai_dispatch():
    """Label maps go to fused, float targets to mixed; a float (N, 1, ...) label map counts as a label map."""
    assert implementation_for(torch.zeros(2, 4, 4, dtype=torch.int32)) == "fused"
    assert implementation_for(torch.zeros(2, 3, 4, 4)) == "mixed"
    loss = ours_monai.DiceLoss(softmax=True, to_onehot_y=True)
    assert not loss.target(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4)).is_floating_point()


# ------------------------------------------------------------------------------------------- nnU-Net

def test_nnunet_installed_version():
    from importlib.metadata import version

    assert version("nnunetv2") == "2.8.1"
    assert version("torch").startswith("2.13.0")


@st.composite
def nnunet_dice_case(draw):
    logits, labels, dtype = draw(problems(min_channels=2))
    channels = logits.shape[1]
    nonlin = draw(st.sampled_from(["softmax", "sigmoid"] + ["generic"] * (dtype == torch.float32)))
    apply_nonlin = {"softmax": softmax_helper_dim1, "sigmoid": torch.sigmoid,
                    "generic": lambda x: torch.softmax(x / 2, 1)}[nonlin]
    kwargs = dict(apply_nonlin=apply_nonlin, batch_dice=draw(st.booleans()), do_bg=draw(st.booleans()),
                  smooth=draw(st.sampled_from([1.0, 1e-5, 0.0])), ddp=False)
    encoding = draw(st.sampled_from(["b1", "b", "float", "onehot"]))
    target = {"b1": labels.unsqueeze(1), "b": labels, "float": labels.unsqueeze(1).float(),
              "onehot": one_hot(labels, channels)}[encoding]
    args = (target,)
    if encoding != "onehot" and draw(st.booleans()):
        gen = torch.Generator().manual_seed(labels.numel())
        args = (target, (torch.rand(labels.unsqueeze(1).shape, generator=gen) > 0.3).float())
    return logits, args, dtype, kwargs


@pytest.mark.parametrize("name", ["MemoryEfficientSoftDiceLoss", "SoftDiceLoss"])
@HYPOTHESIS
@given(data=st.data())
def test_nnunet_dice_losses(name, data):
    logits, args, dtype, kwargs = data.draw(nnunet_dice_case())
    compare(f"nnunet.{name}", getattr(ours_nnunet, name)(**kwargs), getattr(nnunet_dice, name)(**kwargs),
            logits, dtype, *args)


@st.composite
def nnunet_compound_case(draw):
    logits, labels, dtype = draw(problems(min_channels=2))
    channels = logits.shape[1]
    soft_dice_kwargs = dict(batch_dice=draw(st.booleans()), smooth=draw(st.sampled_from([1e-5, 1.0])),
                            do_bg=draw(st.booleans()), ddp=False)
    ce_kwargs = {}
    if draw(st.booleans()):
        ce_kwargs["weight"] = torch.tensor([draw(st.floats(0.2, 3.0)) for _ in range(channels)])
    if draw(st.booleans()):
        ce_kwargs["label_smoothing"] = 0.1
    ignore_label = channels if draw(st.booleans()) else None  # nnU-Net's ignore label is the highest label
    target = labels.unsqueeze(1)
    if ignore_label is not None:
        target = with_ignored(target, ignore_label, draw(st.sampled_from([0.2, 1.0])), labels.numel())
    kwargs = dict(weight_ce=draw(st.sampled_from([1.0, 0.5, 0.0])), weight_dice=draw(st.sampled_from([1.0, 2.0, 0.0])),
                  ignore_label=ignore_label)
    dice_class = draw(st.sampled_from(["MemoryEfficientSoftDiceLoss", "SoftDiceLoss"]))
    if kwargs["weight_ce"] == kwargs["weight_dice"] == 0:
        kwargs["weight_dice"] = 1.0
    return logits, target.to(draw(st.sampled_from([torch.int64, torch.float32]))), dtype, soft_dice_kwargs, \
        ce_kwargs, kwargs, dice_class


@HYPOTHESIS
@given(data=st.data())
def test_nnunet_dc_and_ce_loss(data):
    logits, target, dtype, soft_dice_kwargs, ce_kwargs, kwargs, dice_class = data.draw(nnunet_compound_case())
    all_ignored = kwargs["ignore_label"] is not None and bool((target == kwargs["ignore_label"]).all())
    if all_ignored and kwargs["weight_dice"] == 0:
        kwargs["weight_dice"] = 1.0  # both terms 0: nothing to compare
    ours = ours_nnunet.DC_and_CE_loss(soft_dice_kwargs, ce_kwargs, dice_class=getattr(ours_nnunet, dice_class),
                                      **kwargs)
    peer = nnunet_compound.DC_and_CE_loss(soft_dice_kwargs, dict(ce_kwargs),
                                          dice_class=getattr(nnunet_dice, dice_class), **kwargs)
    if all_ignored:  # every pixel ignored: both give the Dice term alone
        with torch.no_grad():
            torch.testing.assert_close(ours(logits.float(), target), peer(logits.float(), target), rtol=1e-6, atol=1e-7)
        return
    compare("nnunet.DC_and_CE_loss", ours, peer, logits, dtype, target)


@pytest.mark.parametrize("ignore_label", [None, 3])
def test_nnunet_dc_and_ce_loss_runs_both_terms_in_the_fused_op(ignore_label, folded_calls):
    gen = torch.Generator().manual_seed(11)
    logits = torch.randn((2, 3, 9, 8), generator=gen, dtype=torch.float64) * 3
    target = torch.randint(0, 3, (2, 1, 9, 8), generator=gen)
    if ignore_label is not None:
        target = with_ignored(target, ignore_label, 0.3, 12)
    args = (dict(batch_dice=True, smooth=1e-5, do_bg=False, ddp=False), {"weight": torch.tensor([0.5, 1.0, 2.0]),
                                                                         "label_smoothing": 0.1})
    ours = ours_nnunet.DC_and_CE_loss(*args, weight_dice=2.0, ignore_label=ignore_label,
                                      dice_class=ours_nnunet.MemoryEfficientSoftDiceLoss)
    peer = nnunet_compound.DC_and_CE_loss(args[0], dict(args[1]), weight_dice=2.0, ignore_label=ignore_label,
                                          dice_class=nnunet_dice.MemoryEfficientSoftDiceLoss)
    compare("nnunet.DC_and_CE_loss", ours, peer, logits, torch.float32, target)
    assert folded_calls, "the fused compound path was not taken"


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_nnunet_dc_and_ce_loss_with_no_ce_weight_counted_is_the_dice_term(label_smoothing, monkeypatch):
    # Every counted pixel of a class whose CE weight is 0: nnU-Net divides 0 by 0 (NaN); ours gives
    # CE 0 on both paths, fused and unfused (docs/conventions.md, divergences).
    logits = torch.randn((2, 3, 5, 4), generator=torch.Generator().manual_seed(3))
    target = torch.zeros((2, 1, 5, 4), dtype=torch.int64)
    args = (dict(batch_dice=True, smooth=1e-5, do_bg=False, ddp=False),
            {"weight": torch.tensor([0.0, 1.0, 2.0]), "label_smoothing": label_smoothing})
    loss = ours_nnunet.DC_and_CE_loss(*args, dice_class=ours_nnunet.MemoryEfficientSoftDiceLoss)
    dice = ours_nnunet.MemoryEfficientSoftDiceLoss(softmax_helper_dim1, **args[0])(logits, target)
    fused = loss(logits, target)
    monkeypatch.setattr(ours_nnunet.DC_and_CE_loss, "fused", lambda self, *a: None)
    unfused = loss(logits, target)
    torch.testing.assert_close(fused, dice, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(unfused, dice, rtol=1e-6, atol=1e-7)


def test_nnunet_refusals_and_ddp_without_process_group():
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(3, (2, 1, 4, 4))
    with pytest.raises(ValueError, match="clip_tp"):
        ours_nnunet.SoftDiceLoss(clip_tp=0.1)
    with pytest.raises(ValueError, match="loss_mask must hold 0"):
        ours_nnunet.MemoryEfficientSoftDiceLoss()(logits, labels, torch.full((2, 1, 4, 4), 0.5))
    with pytest.raises(ValueError, match="ce_kwargs"):
        ours_nnunet.DC_and_CE_loss({}, {"reduce": False})
    # ddp=True without a process group: the single-process loss (nnU-Net's AllGatherGrad needs a group)
    kwargs = dict(apply_nonlin=softmax_helper_dim1, batch_dice=True)
    torch.testing.assert_close(ours_nnunet.MemoryEfficientSoftDiceLoss(ddp=True, **kwargs)(logits, labels),
                               nnunet_dice.MemoryEfficientSoftDiceLoss(ddp=False, **kwargs)(logits, labels))


DDP_PROBE = """
import sys, torch, torch.distributed as dist
import nnunetv2.training.loss.dice as nnunet_dice
from nnunetv2.utilities.helpers import softmax_helper_dim1
from dice_impls.compat import nnunet as ours
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
gen = torch.Generator().manual_seed(0)
logits, labels = torch.randn(2, 3, 5, 4, 3, generator=gen), torch.randint(3, (2, 1, 5, 4, 3), generator=gen)
kwargs = dict(apply_nonlin=softmax_helper_dim1, batch_dice=True, do_bg=False, smooth=1e-5, ddp=True)
results = []
for loss_fn in (ours.MemoryEfficientSoftDiceLoss(**kwargs), nnunet_dice.MemoryEfficientSoftDiceLoss(**kwargs)):
    x = logits.clone().requires_grad_()
    loss = loss_fn(x, labels)
    loss.backward()
    results.append((loss.detach(), x.grad))
print(float((results[0][0] - results[1][0]).abs()), float((results[0][1] - results[1][1]).abs().max()))
dist.destroy_process_group()
"""


def test_nnunet_ddp_with_a_process_group(tmp_path):
    """ddp=True with batch Dice and an initialised (one-rank gloo) group: our global_dice_loss path
    against nnU-Net's AllGatherGrad, which with one rank have the same value and gradient."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", DDP_PROBE, str(tmp_path / "rendezvous")], capture_output=True,
                         text=True, check=True, cwd=root, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    loss_diff, grad_diff = (float(v) for v in out.stdout.split())
    assert loss_diff < 1e-6 and grad_diff < 1e-7, out.stdout


# ----------------------------------------------------------------------------------------------- smp

@st.composite
def smp_case(draw, kind):
    mode = draw(st.sampled_from(["binary", "multiclass", "multilabel"]))
    binary = mode == "binary"
    logits, labels, dtype = draw(problems(min_channels=1 if binary else 2, max_channels=1 if binary else 4))
    channels = logits.shape[1]
    kwargs = dict(log_loss=draw(st.booleans()), from_logits=draw(st.booleans()),
                  smooth=draw(st.sampled_from([0.0, 0.5])), eps=draw(st.sampled_from([1e-7, 1e-3])))
    gen = torch.Generator().manual_seed(labels.numel())
    if mode == "binary":
        target = labels if draw(st.booleans()) else labels.unsqueeze(1)
        if draw(st.booleans()):
            kwargs["ignore_index"] = 255
            target = with_ignored(target, 255, 0.2, labels.numel())
        elif dtype == torch.float32 and draw(st.booleans()):
            target = torch.rand(target.shape, generator=gen)  # a soft mask (float32 only: below)
    elif mode == "multiclass":
        target = labels
        if draw(st.booleans()):
            kwargs["ignore_index"] = 255
            target = with_ignored(target, 255, 0.2, labels.numel())
    else:
        target = (torch.rand(logits.shape, generator=gen) < 0.3).float()
        # Soft targets in float32 only, as for MONAI: smp's |p - g| has a kink at p = g, and a
        # bfloat16 p within its rounding of g takes the other side of it than the peer's float32 p.
        if dtype == torch.float32 and draw(st.booleans()):
            target = target * torch.rand(logits.shape, generator=gen)  # soft labels
    if mode != "binary":
        if draw(st.booleans()):
            kwargs["classes"] = draw(st.lists(st.integers(0, channels - 1), min_size=1, max_size=channels + 1))
        if draw(st.booleans()):
            kwargs["class_weights"] = [draw(st.floats(0.2, 3.0)) for _ in range(channels)]
    if kind == "tversky":
        kwargs.update(alpha=draw(st.floats(0.1, 1.0)), beta=draw(st.floats(0.1, 1.0)), gamma=draw(st.floats(0.5, 2.0)))
    # A batch holding none of the kept classes scores 0 with a zero gradient (NaN in smp's Tversky
    # with gamma < 1, a divergence tested on its own): it would prove nothing, so draw another.
    kept = kwargs.get("classes", range(channels))
    if mode == "binary":
        present = ((target > 0) & (target != 255)).any()
    elif mode == "multiclass":
        present = any((target == c).any() for c in kept)
    else:
        present = any(target[:, c].any() for c in kept)
    assume(bool(present))
    return mode, logits, target, dtype, kwargs


SMP = {"dice": ("DiceLoss", smp_dice_loss), "jaccard": ("JaccardLoss", smp_jaccard_loss),
       "tversky": ("TverskyLoss", smp_tversky_loss)}


@pytest.mark.parametrize("kind", list(SMP))
@HYPOTHESIS
@given(data=st.data())
def test_smp_region_losses(kind, data):
    mode, logits, target, dtype, kwargs = data.draw(smp_case(kind))
    name, peer = SMP[kind]
    if not kwargs["from_logits"]:
        # Probabilities in, as smp expects then, kept off 0 and 1 in both dtypes: where p equals a
        # hard target exactly, smp's |p - g| has another subgradient than the ordinary p * g
        # (docs/conventions.md, divergences).
        logits = logits / logits.abs().max() * 2
        logits = torch.softmax(logits, 1) if mode == "multiclass" else torch.sigmoid(logits)
    compare(f"smp.{name}", getattr(ours_smp, name)(mode, **kwargs), lambda x, t: peer(x, t, mode, **kwargs),
            logits, dtype, target)


def test_smp_tversky_gamma_below_one_at_a_zero_loss_has_a_zero_gradient():
    # Every kept class absent from the batch: smp's mean ** gamma has an infinite derivative at 0,
    # times its absent-class mask of 0, so its gradient is NaN; ours is 0 (docs/conventions.md).
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    labels = torch.randint(2, (2, 4, 5), generator=gen)  # class 2 absent
    x, x_peer = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = ours_smp.TverskyLoss("multiclass", classes=[2], gamma=0.5)(x, labels)
    peer_loss = smp_tversky_loss(x_peer, labels, "multiclass", classes=[2], gamma=0.5)
    loss.backward()
    peer_loss.backward()
    assert loss.item() == peer_loss.item() == 0.0
    assert x_peer.grad.isnan().all()  # the peer's value, which this diverges from
    assert torch.equal(x.grad, torch.zeros_like(x.grad))
    # Elsewhere gamma < 1 is smp's value and gradient.
    x, x_peer = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = ours_smp.TverskyLoss("multiclass", gamma=0.5)(x, labels)
    peer_loss = smp_tversky_loss(x_peer, labels, "multiclass", gamma=0.5)
    loss.backward()
    peer_loss.backward()
    assert error(loss, peer_loss, 1.0) <= 1e-6 and error(x.grad, x_peer.grad, 1e-30) <= 1e-5


@pytest.mark.parametrize("name", ["DiceLoss", "JaccardLoss", "TverskyLoss"])
def test_smp_log_loss_clamps_the_score_at_eps(name):
    # smp's -log(max(score, eps)): with eps=1e-3, class 2 (one pixel, its logit far below the
    # others) scores ~1e-13 and counts -log(1e-3). The spec alone clamps at the smallest normal
    # float, which the drop-in used to return (-log(1e-13) for that class).
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 4, 6, 5, generator=gen)
    logits[:, 2] = -30.0
    labels = torch.randint(0, 4, (2, 6, 5), generator=gen)
    labels[labels == 2] = 1
    labels[0, 0, 0] = 2
    peer = {"DiceLoss": smp_dice_loss, "JaccardLoss": smp_jaccard_loss, "TverskyLoss": smp_tversky_loss}[name]
    for kwargs in (dict(eps=1e-3), dict(eps=1e-3, classes=[2, 1], class_weights=[1.0, 2.0, 0.5, 1.0])):
        x, x_peer = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        loss = getattr(ours_smp, name)("multiclass", log_loss=True, **kwargs)(x, labels)
        peer_loss = peer(x_peer, labels, "multiclass", log_loss=True, **kwargs)
        loss.backward()
        peer_loss.backward()
        assert error(loss, peer_loss, 1.0) <= 1e-6 and error(x.grad, x_peer.grad, 1e-30) <= 1e-5
        unclamped = getattr(ours_smp, name)("multiclass", log_loss=True, **dict(kwargs, eps=1e-12))(logits, labels)
        assert unclamped > loss + 1  # the case reaches the clamp


def test_smp_refusals():
    with pytest.raises(ValueError, match="mode must be one of"):
        ours_smp.DiceLoss("multi")
    with pytest.raises(ValueError, match="binary"):
        ours_smp.DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="multilabel"):
        ours_smp.JaccardLoss("multilabel", ignore_index=255)


# ---------------------------------------------------------------------------------- compound memory

MEMORY_PROBE = """
import sys, torch, torch.nn.functional as F
from benchmarks.benchmarks.common import make_inputs, peak_rss_increase
import dice_impls
torch.set_num_threads(1)
logits, labels = make_inputs(sys.argv[1], "float32")
x = logits.requires_grad_()
losses = {"compound": lambda: dice_impls.DiceCELoss("fused")(x, labels),
          "cross_entropy": lambda: F.cross_entropy(x, labels),
          "dice": lambda: dice_impls.dice_loss(x, labels, impl="fused")}
for name, fn in losses.items():
    fn().backward(); x.grad = None  # warm-up
    print(name, peak_rss_increase(lambda: fn().backward()))
    x.grad = None
print("logits", logits.numel() * logits.element_size())
"""


def test_compound_cross_entropy_builds_no_one_hot():
    """The peak memory of DiceCELoss(impl="fused") stays within what its two terms need alone:
    F.cross_entropy's peak plus half the logits' size (fused Dice's own peak is about one logits'
    size, its gradient; a float32 one-hot target would add one more). Measured in a fresh process
    (peak RSS, deterministic up to page granularity)."""
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, "2x4x64x64x64"], capture_output=True, text=True,
                         check=True, cwd=root, env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"})
    peaks = {name: int(value) for name, value in (line.split() for line in out.stdout.strip().splitlines())}
    assert peaks["compound"] <= peaks["cross_entropy"] + 0.5 * peaks["logits"], peaks
    assert peaks["compound"] < 4 * peaks["logits"], peaks  # the one-hot focal formulation used 9.6x


@pytest.mark.parametrize("options", [dict(), dict(batch=True), dict(include_background=False),
                                     dict(label_smoothing=0.1, lambda_ce=0.5, lambda_dice=2.0)])
@pytest.mark.parametrize("shape", [(2, 4, 9, 11), (2, 3, 5, 6, 7)])
def test_monai_dice_ce_folds_into_the_fused_kernel_and_matches_monai(options, shape):
    """MONAI's usual DiceCELoss(to_onehot_y=True, softmax=True) runs both terms in the fused op's two
    passes (no one-hot, no CE buffers) and still equals MONAI's loss and gradient."""
    gen = torch.Generator().manual_seed(len(shape) * 10 + len(options))
    logits = torch.randn(*shape, generator=gen, requires_grad=True)
    labels = torch.randint(0, shape[1], (shape[0], 1, *shape[2:]), generator=gen)
    ours = ours_monai.DiceCELoss(to_onehot_y=True, softmax=True, **options)
    peer = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True, **options)
    assert ours.fused(logits, labels) is not None
    loss = ours(logits, labels)
    (grad,) = torch.autograd.grad(loss, logits)
    peer_loss = peer(logits, labels)
    (peer_grad,) = torch.autograd.grad(peer_loss, logits)
    torch.testing.assert_close(loss, peer_loss, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, peer_grad, rtol=1e-5, atol=1e-8)
