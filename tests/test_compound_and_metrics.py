"""Dice + cross-entropy / focal against independent formulas, and the hard metrics against hand
counts, a per-pixel loop and torchmetrics.

The per-pixel terms are written out here from their definitions (F.cross_entropy,
F.binary_cross_entropy_with_logits, a torchvision-style sigmoid focal loss, a softmax focal loss
by gather) and never through dice_impls.compound. Inputs are float64 so loss and gradient must
agree to rounding.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchmetrics.functional.classification as tm_classification  # dev dependency: never skipped

import dice_impls
from dice_impls import DiceCELoss, DiceFocalLoss, DiceSpec, compound, metrics
from helpers import random_inputs

TOL = dict(rtol=1e-10, atol=1e-12)


def loss_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def assert_same_loss_and_grad(compound, target, expected, logits):
    """``compound(x, target)`` and ``expected(x)`` agree in value and gradient at ``x = logits``."""
    loss, grad = loss_and_grad(lambda x: compound(x, target), logits)
    want_loss, want_grad = loss_and_grad(expected, logits)
    torch.testing.assert_close(loss, want_loss, **TOL)
    torch.testing.assert_close(grad, want_grad, **TOL)
    assert want_grad.abs().max() > 0


def sigmoid_focal(x, t, gamma, alpha):
    """torchvision.ops.sigmoid_focal_loss(x, t, alpha, gamma, reduction="none"), written out."""
    p = torch.sigmoid(x)
    ce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    p_t = p * t + (1 - p) * (1 - t)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * t + (1 - alpha) * (1 - t)) * loss
    return loss


def softmax_focal(x, labels, gamma, alpha, ignore_index=None):
    """Mean over counted pixels of -a_y (1 - p_y)^gamma log p_y, a_0 = 1 - alpha, a_c = alpha (c >= 1)."""
    keep = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    y = torch.where(keep, labels, 0)
    log_p = F.log_softmax(x, 1).gather(1, y.unsqueeze(1)).squeeze(1)
    loss = -((1 - log_p.exp()) ** gamma) * log_p
    if alpha is not None:
        loss = loss * torch.full_like(loss, alpha).masked_fill(y == 0, 1 - alpha)
    return loss[keep].sum() / keep.sum()


# ------------------------------------------------------------------------------------ compound losses

TERM_WEIGHTS = [(1.0, 1.0), (0.3, 1.7), (1.0, 0.0), (0.0, 1.0)]


@pytest.mark.parametrize("impl", ["reference", "naive", "vectorized"])
@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("lambdas", TERM_WEIGHTS)
def test_dice_ce_softmax(impl, ignore_index, lambdas):
    seed = TERM_WEIGHTS.index(lambdas) + (ignore_index is not None)
    logits, labels = random_inputs((3, 7, 6), 4, torch.float64, seed=seed, ignore_index=ignore_index)
    spec = DiceSpec(ignore_index=ignore_index, include_background=False)
    compound = DiceCELoss(impl, spec, lambda_dice=lambdas[0], lambda_ce=lambdas[1])

    def expected(x):
        ce = F.cross_entropy(x, labels, ignore_index=-100 if ignore_index is None else ignore_index)
        return lambdas[0] * dice_impls.dice_loss(x, labels, spec, impl="reference") + lambdas[1] * ce

    assert_same_loss_and_grad(compound, labels, expected, logits)


def test_dice_ce_sigmoid_multilabel_3d():
    logits = random_inputs((2, 5, 4, 3), 3, torch.float64, seed=5)[0]
    target = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64) < 0.4).double()
    spec = DiceSpec(activation="sigmoid", batch=True)
    expected = lambda x: (dice_impls.dice_loss(x, target, spec, impl="reference")  # noqa: E731
                          + 0.5 * F.binary_cross_entropy_with_logits(x, target))
    assert_same_loss_and_grad(DiceCELoss(spec=spec, lambda_ce=0.5), target, expected, logits)


def test_dice_ce_sigmoid_binary_labels_with_ignore():
    """One sigmoid channel, {0, 1} labels, ignored pixels out of both terms."""
    logits, labels = random_inputs((3, 8, 8), 1, torch.float64, seed=7, ignore_index=255)
    spec = DiceSpec(activation="sigmoid", ignore_index=255)
    keep = labels != 255

    def expected(x):
        bce = F.binary_cross_entropy_with_logits(x[:, 0][keep], (labels[keep] == 1).double())
        return dice_impls.dice_loss(x, labels, spec, impl="reference") + bce

    assert_same_loss_and_grad(DiceCELoss(spec=spec), labels, expected, logits)


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (1.5, None), (0.0, 0.7)])
def test_dice_focal_sigmoid(gamma, alpha):
    logits = random_inputs((2, 9, 7), 3, torch.float64, seed=8)[0]
    target = (torch.rand(logits.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64) < 0.2).double()
    spec = DiceSpec(activation="sigmoid")
    expected = lambda x: (0.7 * dice_impls.dice_loss(x, target, spec, impl="reference")  # noqa: E731
                          + 1.3 * sigmoid_focal(x, target, gamma, alpha).mean())
    assert_same_loss_and_grad(DiceFocalLoss(spec=spec, lambda_dice=0.7, lambda_focal=1.3, gamma=gamma, alpha=alpha),
                              target, expected, logits)


def test_dice_focal_sigmoid_labels_with_ignore():
    """Label map + sigmoid: focal over the one-hot channels of the counted pixels only."""
    logits, labels = random_inputs((2, 8, 6), 3, torch.float64, seed=10, ignore_index=-1)
    spec = DiceSpec(activation="sigmoid", ignore_index=-1)
    keep = (labels != -1).unsqueeze(1).expand_as(logits)

    def expected(x):
        onehot = F.one_hot(labels.clamp_min(0), 3).movedim(-1, 1).double()
        focal = sigmoid_focal(x, onehot, 2.0, 0.25)[keep].mean()
        return dice_impls.dice_loss(x, labels, spec, impl="reference") + focal

    assert_same_loss_and_grad(DiceFocalLoss(spec=spec, gamma=2.0, alpha=0.25), labels, expected, logits)


@pytest.mark.parametrize("gamma,alpha,ignore_index", [(2.0, None, None), (2.0, 0.25, 255), (0.5, 0.6, None)])
def test_dice_focal_softmax(gamma, alpha, ignore_index):
    logits, labels = random_inputs((3, 6, 7), 4, torch.float64, seed=11, ignore_index=ignore_index)
    spec = DiceSpec(ignore_index=ignore_index)
    expected = lambda x: (dice_impls.dice_loss(x, labels, spec, impl="reference")  # noqa: E731
                          + softmax_focal(x, labels, gamma, alpha, ignore_index))
    assert_same_loss_and_grad(DiceFocalLoss(spec=spec, gamma=gamma, alpha=alpha), labels, expected, logits)


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, labels = random_inputs((2, 7, 7), 3, torch.float64, seed=12)
    focal = DiceFocalLoss(lambda_dice=0.0, gamma=0.0, alpha=None)
    assert_same_loss_and_grad(focal, labels, lambda x: F.cross_entropy(x, labels), logits)


@pytest.mark.parametrize("soft_target", [False, True])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_focal_gamma_below_one_on_saturated_logits_has_finite_gradient(activation, soft_target):
    """A confident correct prediction (p rounds to 1): (1 - p)**gamma with gamma < 1 must not give
    inf * 0 = NaN in the gradient; the focal term there is 0 (float64 reference: < 1e-12)."""
    labels = random_inputs((2, 4, 4), 3, seed=16)[1]
    onehot = F.one_hot(labels, 3).movedim(-1, 1)
    logits = onehot.float() * 80 - 40
    target = onehot.float() if soft_target else labels
    x = logits.clone().requires_grad_()
    focal = compound.focal_loss(x, target, DiceSpec(activation=activation), gamma=0.5)
    focal.backward()
    assert torch.isfinite(x.grad).all()
    assert focal.item() < 1e-12


def test_compound_all_ignored_batch_is_finite():
    """No counted pixel: the per-pixel term is 0 and the Dice term is its documented all-ignored value."""
    logits = random_inputs((2, 5, 5), 3, torch.float64, seed=13)[0]
    labels = torch.full((2, 5, 5), 255)
    spec = DiceSpec(ignore_index=255)
    for loss_fn in (DiceCELoss(spec=spec), DiceFocalLoss(spec=spec)):
        loss, grad = loss_and_grad(lambda x: loss_fn(x, labels), logits)
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(loss, dice_impls.dice_loss(logits, labels, spec))


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_compound_sum_reduction_sums_both_terms(activation):
    """reduction="sum": the Dice losses summed over (images, classes) plus the per-pixel term summed
    over its elements (MONAI's DiceCELoss "sum"), not a mean CE added to a Dice sum."""
    logits, labels = random_inputs((2, 6, 5), 3, torch.float64, seed=20, ignore_index=255)
    spec = DiceSpec(activation=activation, ignore_index=255, reduction="sum")
    keep = labels != 255

    def expected(x):
        if activation == "softmax":
            pixel = F.cross_entropy(x, labels, ignore_index=255, reduction="sum")
        else:
            onehot = F.one_hot(labels.clamp_max(2), 3).movedim(-1, 1).double()
            pixel = (F.binary_cross_entropy_with_logits(x, onehot, reduction="none") * keep.unsqueeze(1)).sum()
        return dice_impls.dice_loss(x, labels, spec, impl="reference") + 0.5 * pixel

    assert_same_loss_and_grad(DiceCELoss(spec=spec, lambda_ce=0.5), labels, expected, logits)


def test_compound_none_reduction_refuses_forward_and_gives_both_terms():
    logits, labels = random_inputs((2, 5, 4, 3), 4, torch.float64, seed=21, ignore_index=-1)
    spec = DiceSpec(ignore_index=-1, reduction="none")
    loss = DiceCELoss(spec=spec)
    with pytest.raises(ValueError, match="no common shape"):
        loss(logits, labels)
    dice, pixel = loss.terms(logits, labels)
    torch.testing.assert_close(dice, dice_impls.dice_loss(logits, labels, spec, impl="reference"), **TOL)
    torch.testing.assert_close(pixel, F.cross_entropy(logits, labels, ignore_index=-1, reduction="none"), **TOL)
    assert dice.shape == (2, 4) and pixel.shape == labels.shape


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_weighted_ce_uses_the_spec_weight(reduction):
    """weighted_ce=True: F.cross_entropy's class weight, its weighted mean sum w_y l / sum w_y."""
    logits, labels = random_inputs((3, 6, 6), 4, torch.float64, seed=22, ignore_index=255)
    weight = (0.5, 2.0, 1.0, 3.0)
    spec = DiceSpec(ignore_index=255, weight=weight, reduction=reduction)
    w = torch.tensor(weight, dtype=torch.float64)
    expected = lambda x: (dice_impls.dice_loss(x, labels, spec, impl="reference")  # noqa: E731
                          + F.cross_entropy(x, labels, weight=w, ignore_index=255, reduction=reduction))
    assert_same_loss_and_grad(DiceCELoss(spec=spec, weighted_ce=True), labels, expected, logits)
    unweighted = DiceCELoss(spec=spec)(logits, labels)
    assert not torch.allclose(unweighted, expected(logits))  # the switch changes the CE term
    with pytest.raises(ValueError, match="weighted_pixel=True needs"):
        DiceCELoss(weighted_ce=True)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
def test_binary_cross_entropy_of_a_label_map_equals_the_one_hot_form(channels, reduction, weighted):
    """compound.binary_cross_entropy on a label map (softplus and a gather, no one-hot) equals
    F.binary_cross_entropy_with_logits on the one-hot target, ignored pixels left out; uint8 labels
    with an ignore_index they cannot hold (256) ignore nothing."""
    logits, labels = random_inputs((2, 5, 6), channels, torch.float64, seed=23 + channels, ignore_index=255,
                                   label_dtype=torch.uint8)
    onehot = ((labels == 1).unsqueeze(1) if channels == 1 else F.one_hot(labels.long().clamp_max(channels - 1),
                                                                          channels).movedim(-1, 1)).double()
    keep = (labels != 255).unsqueeze(1).double()
    weight = torch.tensor([0.5, 2.0, 1.5][:channels], dtype=torch.float64) if weighted else None
    pos_weight = torch.tensor([3.0, 0.5, 1.0][:channels], dtype=torch.float64) if weighted else None
    view = (1, channels, 1, 1)

    def expected(x):
        per = F.binary_cross_entropy_with_logits(x, onehot, reduction="none", pos_weight=(
            None if pos_weight is None else pos_weight.view(view[1:])))
        per = per * keep * (1 if weight is None else weight.view(view))
        return {"none": per, "sum": per.sum(), "mean": per.sum() / (keep.sum() * channels)}[reduction]

    got = lambda x: compound.binary_cross_entropy(x, labels, weight=weight, pos_weight=pos_weight,  # noqa: E731
                                                  ignore_index=255, reduction=reduction)
    loss, grad = loss_and_grad(lambda x: got(x).sum(), logits)
    want_loss, want_grad = loss_and_grad(lambda x: expected(x).sum(), logits)
    torch.testing.assert_close(loss, want_loss, **TOL)
    torch.testing.assert_close(grad, want_grad, **TOL)
    clean = labels.masked_fill(labels == 255, 0)
    torch.testing.assert_close(compound.binary_cross_entropy(logits, clean, ignore_index=256, reduction=reduction),
                               compound.binary_cross_entropy(logits, clean, reduction=reduction), **TOL)


def test_cross_entropy_all_ignored_and_half_logits():
    """A batch with no counted pixel: mean 0 (weighted too) with a zero, finite gradient. Half logits:
    computed in float32 (equal to the float32 loss of the same values), gradient in the half dtype."""
    logits = random_inputs((2, 4, 4), 3, torch.float64, seed=24)[0]
    ignored = torch.full((2, 4, 4), 7)
    for weight in (None, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)):
        loss, grad = loss_and_grad(lambda x: compound.cross_entropy(x, ignored, weight=weight, ignore_index=7), logits)
        assert loss == 0 and torch.equal(grad, torch.zeros_like(grad))
    labels = random_inputs((2, 4, 4), 3, seed=25)[1]
    half = logits.to(torch.bfloat16).requires_grad_()
    loss = compound.cross_entropy(half, labels)
    loss.backward()
    assert loss.dtype == torch.float32 and half.grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, F.cross_entropy(half.detach().float(), labels))


def test_seed_out_of_range_labels_leave_the_ce_term():
    logits, labels = random_inputs((2, 6, 6), 3, torch.float64, seed=26, out_of_range_fraction=0.3)
    spec = DiceSpec.preset("seed")
    inside = labels < 3
    expected = lambda x: (dice_impls.dice_loss(x, labels, spec, impl="reference")  # noqa: E731
                          + F.cross_entropy(x.movedim(1, -1)[inside], labels[inside]))
    assert_same_loss_and_grad(DiceCELoss(spec=spec), labels, expected, logits)


def test_compound_rejects_bad_configuration():
    with pytest.raises(ValueError, match="term weights"):
        DiceCELoss(lambda_ce=-1.0)
    with pytest.raises(ValueError, match="activation"):
        DiceFocalLoss(activation="none")
    with pytest.raises(ValueError, match="unknown implementation"):
        DiceCELoss("no-such-impl")


# ------------------------------------------------------------------------------------------- metrics

def pixel_loop_counts(pred, target, num_classes, ignore_index=None):
    """(tp, fp, fn) per image and class by visiting every pixel: the definition, no vectorisation."""
    counts = torch.zeros(3, pred.shape[0], num_classes, dtype=torch.int64)
    for n in range(pred.shape[0]):
        for p, t in zip(pred[n].flatten().tolist(), target[n].flatten().tolist()):
            if t == ignore_index:
                continue
            if p == t:
                counts[0, n, p] += 1
            else:
                counts[1, n, p] += 1
                counts[2, n, t] += 1
    return counts


def test_confusion_counts_by_hand():
    """pred 0 1 1 2 / 2 2 0 0 against target 0 1 2 2 / 2 0 0 0, classes 0..3:
    class 0: tp at (0,0),(1,2),(1,3) = 3, fp 0, fn at (1,1) = 1;
    class 1: tp (0,1) = 1, fp (0,2) = 1, fn 0;  class 2: tp (0,3),(1,0) = 2, fp (1,1) = 1, fn (0,2) = 1;
    class 3: nowhere. Dice = 2tp / (2tp + fp + fn): 6/7, 2/3, 4/6, undefined (NaN)."""
    pred = torch.tensor([[0, 1, 1, 2], [2, 2, 0, 0]]).unsqueeze(0)
    target = torch.tensor([[0, 1, 2, 2], [2, 0, 0, 0]]).unsqueeze(0)
    tp, fp, fn = metrics.confusion_counts(pred, target, 4)
    assert tp.tolist() == [3, 1, 2, 0] and fp.tolist() == [0, 1, 1, 0] and fn.tolist() == [1, 0, 1, 0]
    dice = metrics.dice(pred, target, 4)
    torch.testing.assert_close(dice[:3], torch.tensor([6 / 7, 2 / 3, 4 / 6], dtype=torch.float64))
    assert dice[3].isnan()
    torch.testing.assert_close(metrics.precision(pred, target, 4)[:3], torch.tensor([1.0, 0.5, 2 / 3], dtype=torch.float64))
    torch.testing.assert_close(metrics.recall(pred, target, 4)[:3], torch.tensor([0.75, 1.0, 2 / 3], dtype=torch.float64))


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_confusion_counts_match_pixel_loop(ignore_index):
    gen = torch.Generator().manual_seed(14)
    pred = torch.randint(0, 5, (3, 7, 6), generator=gen)
    target = random_inputs((3, 7, 6), 5, seed=15, ignore_index=ignore_index)[1]
    expected = pixel_loop_counts(pred, target, 5, ignore_index)
    per_image = metrics.confusion_counts(pred, target, 5, ignore_index=ignore_index, per_image=True)
    pooled = metrics.confusion_counts(pred, target, 5, ignore_index=ignore_index)
    for got_image, got_pooled, want in zip(per_image, pooled, expected):
        assert torch.equal(got_image, want) and torch.equal(got_pooled, want.sum(0))


def test_empty_class_value():
    """A ratio with a zero denominator is ``empty_value`` (NaN by default): Dice for a class absent
    from both maps, precision for a class never predicted, recall for a class absent from the target."""
    pred = torch.tensor([[[0, 0, 1, 1]]])
    target = torch.tensor([[[0, 2, 2, 1]]])
    dice = metrics.dice(pred, target, 4)
    assert dice[3].isnan() and not dice[:3].isnan().any()
    assert metrics.precision(pred, target, 4)[2].isnan()
    assert metrics.recall(pred, target, 4, empty_value=1.0)[3] == 1.0
    assert metrics.dice(pred, target, 4, empty_value=0.0)[3] == 0.0
    assert torch.nanmean(dice) == dice[:3].mean()


FBETA_GRID = list(itertools.product((0.5, 1.0, 2.0), ("global", "samplewise"), (None, 255)))


@pytest.mark.parametrize("beta,multidim_average,ignore_index", FBETA_GRID)
def test_metrics_against_torchmetrics(beta, multidim_average, ignore_index):
    """F-beta, precision and recall per class equal torchmetrics' multiclass ones (average=None),
    NaN empty classes included (torchmetrics' zero_division=nan; its default is 0)."""
    seed = FBETA_GRID.index((beta, multidim_average, ignore_index))
    gen = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, 4, (3, 8, 7), generator=gen)
    target = random_inputs((3, 8, 7), 4, seed=seed, ignore_index=ignore_index, empty_classes=(3,))[1]
    pred[0][pred[0] == 3] = 1  # class 3 absent from image 0 everywhere: undefined there
    kwargs = dict(num_classes=4, average=None, multidim_average=multidim_average, ignore_index=ignore_index,
                  zero_division=float("nan"), validate_args=False)  # its validation refuses nan
    ours = dict(ignore_index=ignore_index, per_image=multidim_average == "samplewise")
    pairs = [
        (metrics.fbeta(pred, target, 4, beta, **ours), tm_classification.multiclass_fbeta_score(pred, target, beta, **kwargs)),
        (metrics.precision(pred, target, 4, **ours), tm_classification.multiclass_precision(pred, target, **kwargs)),
        (metrics.recall(pred, target, 4, **ours), tm_classification.multiclass_recall(pred, target, **kwargs)),
    ]
    for got, want in pairs:
        assert torch.equal(got.isnan(), want.isnan())
        torch.testing.assert_close(got.float(), want.float(), equal_nan=True, rtol=1e-6, atol=1e-7)
    assert pairs[2][0].isnan().any()  # the empty-class case was exercised


def test_predict_labels():
    logits = random_inputs((2, 5, 5), 3, seed=16)[0]
    assert torch.equal(metrics.predict_labels(logits), logits.argmax(1))
    binary = random_inputs((2, 5, 5), 1, seed=17)[0]
    assert torch.equal(metrics.predict_labels(binary, "sigmoid"), (binary[:, 0] > 0).long())
    assert torch.equal(metrics.predict_labels(torch.sigmoid(binary), "none", threshold=0.7),
                       (torch.sigmoid(binary[:, 0]) > 0.7).long())


@pytest.mark.parametrize("gamma, alpha, named", [(-0.5, None, "gamma"), (float("nan"), None, "gamma"),
                                                 (2.0, 1.5, "alpha"), (2.0, -0.1, "alpha")])
def test_focal_parameters_out_of_range_are_refused(gamma, alpha, named):
    with pytest.raises(ValueError, match=f"focal {named}"):
        DiceFocalLoss(gamma=gamma, alpha=alpha)
    logits, labels = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match=f"focal {named}"):
        compound.focal_loss(logits, labels, DiceSpec(), gamma=gamma, alpha=alpha)
