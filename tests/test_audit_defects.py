"""Regression tests of six defects an independent audit found (D1-D6), each against the peer's
behaviour or a clear error."""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TRITON_INTERPRET", "1")  # the Triton path runs interpreted on CPU tensors

import pytest
import torch

from dice_impls import DiceSpec, dice_loss
from dice_impls.compat import monai as compat_monai
from dice_impls.compat import nnunet as compat_nnunet
from dice_impls.compat import smp as compat_smp
from dice_impls.fused import compound_loss, fused_statistics
from helpers import random_inputs

monai_losses = pytest.importorskip("monai.losses")


# --- D1: uint8 labels on the Triton path are range-checked like every other dtype and backend ---

@pytest.mark.parametrize("backend", ["triton", "cpp"])
@pytest.mark.parametrize("bad", [255, 3])
def test_uint8_labels_out_of_range_raise_on_every_backend(backend, bad):
    logits, labels = random_inputs((2, 5, 6), 3, seed=0, label_dtype=torch.uint8)
    labels[1, 2, 3] = bad
    with pytest.raises(ValueError, match=rf"labels out of range: found \[{bad}\]"):
        fused_statistics(logits, labels, DiceSpec(), backend=backend)


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_uint8_ignore_index_255_still_passes(backend):
    logits, labels = random_inputs((2, 5, 6), 3, seed=0, label_dtype=torch.uint8, ignore_index=255)
    spec = DiceSpec(ignore_index=255)
    stats = fused_statistics(logits, labels, spec, backend=backend)
    expected = fused_statistics(logits, labels.long(), spec, backend="chunked")
    torch.testing.assert_close(stats.intersection, expected.intersection)


# --- D2: a negative denominator (probabilities outside [0, 1]) gets MONAI's formula value -------

def negative_probabilities(seed=0):
    gen = torch.Generator().manual_seed(seed)
    p = -2.0 * torch.rand(2, 3, 5, 6, generator=gen)  # denominators P + G < 0
    p[:, 0] += 0.2
    return p, torch.randint(0, 3, (2, 1, 5, 6), generator=gen)


@pytest.mark.parametrize("name", ["DiceLoss", "GeneralizedDiceLoss", "TverskyLoss"])
@pytest.mark.parametrize("options", [{}, {"batch": True}, {"reduction": "none"}])
def test_monai_negative_denominator_matches_monai(name, options):
    p, labels = negative_probabilities()
    ours_input, theirs_input = p.clone().requires_grad_(), p.clone().requires_grad_()
    ours = getattr(compat_monai, name)(to_onehot_y=True, **options)(ours_input, labels)
    theirs = getattr(monai_losses, name)(to_onehot_y=True, **options)(theirs_input, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    ours.sum().backward()
    theirs.sum().backward()
    torch.testing.assert_close(ours_input.grad, theirs_input.grad, rtol=1e-4, atol=1e-6)


def test_monai_softmax_on_one_channel_matches_monai():
    p, labels = negative_probabilities(1)
    p, labels = 2 * p[:, 1:2], (labels > 0).long()  # P + G < 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "single channel prediction, `softmax=True` ignored."
        ours = compat_monai.DiceLoss(softmax=True, reduction="none")(p, labels)
        theirs = monai_losses.DiceLoss(softmax=True, reduction="none")(p, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("impl", ["fused", "vectorized", "mixed", "naive", "reference"])
def test_negative_denominator_is_divided_by_in_every_implementation(impl):
    p, labels = negative_probabilities(2)
    g = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).double()
    tp, pred_sum, target_sum = ((p.double() * g).sum((2, 3)), p.double().sum((2, 3)), g.sum((2, 3)))
    denominator = pred_sum + target_sum + 1e-5
    assert (denominator < 0).any()
    expected = 1 - (2 * tp + 1e-5) / denominator  # the formula as written, MONAI's value
    spec = DiceSpec(activation="none", reduction="none")
    torch.testing.assert_close(dice_loss(p, labels[:, 0], spec, impl=impl).double(), expected, rtol=1e-5, atol=1e-6)
    # reduced, the folded C++ operator scores the sums itself
    torch.testing.assert_close(dice_loss(p, labels[:, 0], spec.replace(reduction="mean"), impl=impl).double(),
                               expected.mean(), rtol=1e-5, atol=1e-6)


# --- D3: label_smoothing outside [0, 1] and focal gamma < 0 are refused ------------------------

@pytest.mark.parametrize("label_smoothing", [-0.1, 1.5, float("nan")])
def test_label_smoothing_outside_unit_interval_is_refused(label_smoothing):
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        compat_monai.DiceCELoss(to_onehot_y=True, softmax=True, label_smoothing=label_smoothing)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        compat_nnunet.DC_and_CE_loss({"batch_dice": True, "ddp": False}, {"label_smoothing": label_smoothing})
    logits, labels = random_inputs((2, 5, 6), 3, seed=0)
    with pytest.raises(ValueError, match="label_smoothing must lie in"):
        compound_loss(logits, labels, DiceSpec(), lambda_dice=1.0, lambda_pixel=1.0, label_smoothing=label_smoothing)


@pytest.mark.parametrize("backend", [None, "triton"])
def test_compound_loss_refuses_negative_gamma(backend):
    logits, labels = random_inputs((2, 5, 6), 3, seed=0)
    with pytest.raises(ValueError, match="focal gamma must be finite and >= 0"):
        compound_loss(logits, labels, DiceSpec(), lambda_dice=1.0, lambda_pixel=1.0, gamma=-1.0, backend=backend)


# --- D4: a NaN or negative cross-entropy class weight gives nnU-Net's (F.cross_entropy's) value ---

NNUNET_DICE = {"batch_dice": True, "smooth": 1e-5, "do_bg": False, "ddp": False}


@pytest.mark.parametrize("weight", [[0.5, -3.0, 0.5], [1.0, float("nan"), 1.0]])
def test_nnunet_ce_weight_of_any_value_matches_nnunet(weight):
    nnunet_compound = pytest.importorskip("nnunetv2.training.loss.compound_losses")
    nnunet_dice = pytest.importorskip("nnunetv2.training.loss.dice")
    logits, labels = random_inputs((2, 5, 6), 3, seed=4)
    target = labels.unsqueeze(1)
    ours = compat_nnunet.DC_and_CE_loss(NNUNET_DICE, {"weight": weight},
                                        dice_class=compat_nnunet.MemoryEfficientSoftDiceLoss)(logits, target)
    theirs = nnunet_compound.DC_and_CE_loss(NNUNET_DICE, {"weight": torch.tensor(weight)},
                                            dice_class=nnunet_dice.MemoryEfficientSoftDiceLoss)(logits, target)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert weight[1] == weight[1] or ours.isnan()


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_compound_loss_negative_weight_sum_is_the_weighted_mean(backend):
    logits, labels = random_inputs((2, 5, 6), 3, seed=5)
    weight = [0.5, -3.0, 0.5]
    fused = compound_loss(logits, labels, DiceSpec(), lambda_dice=0.0, lambda_pixel=1.0, class_weight=weight,
                          backend=backend)
    expected = torch.nn.functional.cross_entropy(logits.double(), labels, weight=torch.tensor(weight).double())
    torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-6)


def test_compound_loss_nan_weight_of_an_absent_class_is_unused():
    logits, labels = random_inputs((2, 5, 6), 3, seed=6)
    labels[labels == 2] = 1
    weight = [1.0, 2.0, float("nan")]
    expected = torch.nn.functional.cross_entropy(logits.double(), labels, weight=torch.tensor(weight).double())
    for backend in ("cpp", "triton"):
        fused = compound_loss(logits, labels, DiceSpec(), lambda_dice=0.0, lambda_pixel=1.0, class_weight=weight,
                              backend=backend)
        torch.testing.assert_close(fused.double(), expected, rtol=1e-5, atol=1e-6)


# --- D5: a class weight of the wrong length is refused by name -----------------------------------

@pytest.mark.parametrize("backend", [None, "triton"])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_compound_loss_checks_class_weight_length(backend, alpha):
    logits, labels = random_inputs((2, 5, 6), 3, seed=0)
    with pytest.raises(ValueError, match="class_weight has 1 entries but logits have 3 channels"):
        compound_loss(logits, labels, DiceSpec(), lambda_dice=1.0, lambda_pixel=1.0, gamma=2.0, alpha=alpha,
                      class_weight=[1.0], backend=backend)


def test_nnunet_ce_weight_length_is_checked():
    logits, labels = random_inputs((2, 5, 6), 3, seed=0)
    loss = compat_nnunet.DC_and_CE_loss(NNUNET_DICE, {"weight": [1.0, 2.0]})
    with pytest.raises(ValueError, match=r"ce_kwargs\['weight'\] has 2 entries but logits have 3 channels"):
        loss(logits, labels.unsqueeze(1))


# --- D6: errors that name the problem, and MONAI's value on an empty input ----------------------

def test_nan_in_a_float_label_map_is_named():
    logits, labels = random_inputs((2, 5, 6), 3, seed=0)
    target = labels.unsqueeze(1).float()
    target[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="float label map contains NaN or inf"):
        compat_monai.DiceLoss(to_onehot_y=True, softmax=True)(logits, target)
    with pytest.raises(ValueError, match="float label map contains NaN or inf"):
        compat_monai.DiceCELoss(to_onehot_y=True, softmax=True)(logits, target)
    with pytest.raises(ValueError, match="float label map contains NaN or inf"):
        compat_nnunet.DC_and_CE_loss(NNUNET_DICE, {})(logits, target)


def numpy_target_calls():
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 1, 4, 4)).numpy()
    yield "input and target", lambda: compat_monai.DiceLoss(to_onehot_y=True, softmax=True)(x, y)
    yield "input and target", lambda: compat_monai.DiceCELoss(to_onehot_y=True, softmax=True)(x, y)
    yield "input and target", lambda: compat_monai.DiceFocalLoss(to_onehot_y=True, softmax=True)(x, y)
    yield "x and y", lambda: compat_nnunet.MemoryEfficientSoftDiceLoss()(x, y)
    yield "net_output and target", lambda: compat_nnunet.DC_and_CE_loss(NNUNET_DICE, {})(x, y)
    yield "y_pred and y_true", lambda: compat_smp.DiceLoss("multiclass")(x, y[:, 0])


@pytest.mark.parametrize("index", range(6))
def test_numpy_target_gets_a_type_error_naming_it(index):
    names, call = list(numpy_target_calls())[index]
    with pytest.raises(TypeError, match=rf"{names} must be torch.Tensors; .* is ndarray"):
        call()


@pytest.mark.parametrize("y_dtype", [torch.int64, torch.float32])
def test_nnunet_one_channel_loss_mask_matches_nnunet(y_dtype):
    nnunet_dice = pytest.importorskip("nnunetv2.training.loss.dice")
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 1, 5, 6, generator=gen)
    y = torch.randint(0, 2, (2, 1, 5, 6), generator=gen).to(y_dtype)
    mask = (torch.rand(2, 1, 5, 6, generator=gen) > 0.3).float()
    for name in ("MemoryEfficientSoftDiceLoss", "SoftDiceLoss"):
        ours = getattr(compat_nnunet, name)(apply_nonlin=torch.sigmoid, ddp=False)(x, y, loss_mask=mask)
        theirs = getattr(nnunet_dice, name)(apply_nonlin=torch.sigmoid, ddp=False)(x, y, loss_mask=mask)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_nnunet_one_hot_loss_mask_refusal_asks_for_another_shape():
    x = torch.randn(2, 3, 5, 6)
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (2, 5, 6)), 3).movedim(-1, 1).float()
    with pytest.raises(ValueError, match=r"one-hot y \(2, 3, 5, 6\) .* \(b, 1, \*spatial\) = \(2, 1, 5, 6\)"):
        compat_nnunet.MemoryEfficientSoftDiceLoss()(x, y, loss_mask=torch.ones(2, 1, 5, 6))


@pytest.mark.parametrize("shape", [(2, 3, 0, 4), (0, 3, 4, 4)])
def test_monai_dice_ce_on_no_pixels_is_monai_nan(shape):
    x, y = torch.randn(shape), torch.zeros(shape[0], 1, *shape[2:])
    ours = compat_monai.DiceCELoss(to_onehot_y=True, softmax=True)(x, y)
    theirs = monai_losses.DiceCELoss(to_onehot_y=True, softmax=True)(x, y)
    assert theirs.isnan() and ours.isnan()
