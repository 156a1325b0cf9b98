"""Each peer preset of ``DiceSpec`` against the peer itself, values and gradients.

MONAI, kornia and torchmetrics run as installed; nnU-Net, segmentation_models_pytorch and the
seed's code run from tests/peers/. Inputs are fresh seeded random logits and label maps (with
ignored pixels and absent classes where the case needs them). Where a preset deliberately differs
from its peer, the test states the exact relation or pins the divergence; docs/conventions.md
lists every result.
"""

from __future__ import annotations

import itertools
import warnings

# The peers are dev dependencies (make test installs them): a missing one fails, it is not skipped.
import kornia.losses as kornia_losses
import monai.losses as monai_losses
import pytest
import torch
import torch.nn.functional as F
import torchmetrics.functional.segmentation as tm_segmentation

import dice_impls
from dice_impls import DiceSpec, metrics
from helpers import random_inputs
from peers.nnunet import dc_and_ce_dice_term, memory_efficient_soft_dice
from peers.seed import Dice_loss, seed_target
from peers.smp import smp_dice_loss

# float64 inputs: both sides then differ by summation order only.
F64 = dict(loss=1e-12, grad=1e-12)
# MONAI's squared_pred takes ||g||^2 as the square of a float32 vector norm of its float32 one-hot
# target, whatever the logits' dtype: G is off by up to ~5e-7 (sqrt(11)**2 in float32 is 11.0000005).
MONAI_SQUARED = dict(loss=1e-6, grad=1e-8)
IMPLS = ("reference", "vectorized")


def loss_and_grad(fn, logits):
    x = logits.detach().clone().requires_grad_()
    loss = fn(x)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def assert_same(ours, theirs, tol=F64, relation=""):
    """Loss and gradient of ``ours`` equal ``theirs`` (both ``(loss, grad)``) within ``tol``."""
    (loss, grad), (peer_loss, peer_grad) = ours, theirs
    assert loss.numel() == peer_loss.numel(), f"{relation}: {tuple(loss.shape)} vs {tuple(peer_loss.shape)}"
    loss_diff = (loss.double().flatten() - peer_loss.double().flatten()).abs().max().item()
    grad_diff = (grad.double() - peer_grad.double()).abs().max().item()
    assert loss_diff <= tol["loss"], f"{relation}: loss differs by {loss_diff:.3g}"
    assert grad_diff <= tol["grad"], f"{relation}: gradient differs by {grad_diff:.3g}"
    # A conformance test on a zero gradient would prove nothing about the backward pass.
    assert peer_grad.abs().max() > 0


# --------------------------------------------------------------------------------------------- MONAI

def monai_loss(activation, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return monai_losses.DiceLoss(
            to_onehot_y=True, softmax=activation == "softmax", sigmoid=activation == "sigmoid", **kwargs
        )


MONAI_GRID = list(itertools.product(("softmax", "sigmoid"), (False, True), (True, False), ("mean", "sum", "none")))


@pytest.mark.parametrize("activation,batch,include_background,reduction", MONAI_GRID)
@pytest.mark.parametrize("impl", IMPLS)
def test_monai_dice_loss(activation, batch, include_background, reduction, impl):
    seed = MONAI_GRID.index((activation, batch, include_background, reduction))
    squared = seed % 2 == 1  # half the grid with squared_pred
    spatial = (7, 6) if seed % 3 else (5, 4, 3)  # a third of it in 3-D
    logits, labels = random_inputs((3, *spatial), 4, torch.float64, seed=seed, empty_classes=(2,))
    peer = monai_loss(activation, include_background=include_background, squared_pred=squared, batch=batch,
                      reduction=reduction)
    spec = DiceSpec.preset("monai", activation=activation, include_background=include_background,
                           squared=squared, batch=batch, reduction=reduction)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl=impl), logits),
                loss_and_grad(lambda x: peer(x, labels.unsqueeze(1)), logits), MONAI_SQUARED if squared else F64,
                relation=str(spec))


@pytest.mark.parametrize("ignore_index", [255, 0, 2])
@pytest.mark.parametrize("batch", [False, True])
def test_monai_ignore_index(ignore_index, batch):
    """MONAI masks both p and g on ignored pixels, whether the ignored value is a class or a sentinel."""
    logits, labels = random_inputs((3, 9, 8), 4, torch.float64, seed=ignore_index + batch, ignore_index=ignore_index)
    peer = monai_loss("softmax", ignore_index=ignore_index, batch=batch)
    spec = DiceSpec.preset("monai", ignore_index=ignore_index, batch=batch)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits),
                loss_and_grad(lambda x: peer(x, labels.unsqueeze(1)), logits))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("include_background", [True, False])
def test_monai_weight_relation(reduction, include_background):
    """MONAI weighs the per-class losses and then takes the plain mean: ``mean(w * l)`` over (N, C).

    Ours is the weighted mean ``sum(w l) / sum(w)`` per unit: equal for reduction "sum" and "none",
    and for "mean" ``monai = ours * sum(w) / C`` exactly (C the classes kept). MONAI's weight
    covers only the kept classes; ours has one entry per logits channel.
    """
    logits, labels = random_inputs((3, 8, 7), 4, torch.float64, seed=11)
    weight = (0.5, 2.0, 1.0, 3.0)
    kept = weight if include_background else weight[1:]
    peer = monai_loss("softmax", include_background=include_background, weight=list(kept), reduction=reduction)
    spec = DiceSpec.preset("monai", include_background=include_background, weight=weight, reduction=reduction)
    loss, grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits)
    factor = sum(kept) / len(kept) if reduction == "mean" else 1.0
    assert_same((loss * factor, grad * factor), loss_and_grad(lambda x: peer(x, labels.unsqueeze(1)), logits))
    if reduction == "mean":  # the relation is not the identity: the two conventions really differ
        assert abs(factor - 1) > 0.1


def test_monai_float_targets():
    """Soft (probability) targets with ``soft_label=False`` and multi-label one-hot targets with sigmoid."""
    # float64 targets: MONAI sums the target in the target's dtype (a float32 target gives a float32 G).
    logits, soft = random_inputs((2, 8, 6), 3, torch.float64, "soft", seed=3, target_dtype=torch.float64)
    peer = monai_losses.DiceLoss(softmax=True)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, soft, DiceSpec.preset("monai")), logits),
                loss_and_grad(lambda x: peer(x, soft), logits))
    gen = torch.Generator().manual_seed(4)
    multilabel = (torch.rand(logits.shape, generator=gen, dtype=torch.float64) < 0.3).double()
    peer = monai_losses.DiceLoss(sigmoid=True, batch=True)
    spec = DiceSpec.preset("monai", activation="sigmoid", batch=True)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, multilabel, spec), logits),
                loss_and_grad(lambda x: peer(x, multilabel), logits))


def test_monai_binary_single_channel():
    """One sigmoid channel with a {0, 1} label map: MONAI's binary case."""
    logits, labels = random_inputs((4, 10, 9), 1, torch.float64, seed=5)
    peer = monai_losses.DiceLoss(sigmoid=True)
    spec = DiceSpec.preset("monai", activation="sigmoid")
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits),
                loss_and_grad(lambda x: peer(x, labels.unsqueeze(1).double()), logits))


def test_monai_float32():
    logits, labels = random_inputs((2, 16, 16), 3, torch.float32, seed=6)
    peer = monai_loss("softmax")
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("monai")), logits),
                loss_and_grad(lambda x: peer(x, labels.unsqueeze(1)), logits), tol=dict(loss=1e-6, grad=1e-7))


# -------------------------------------------------------------------------------------------- kornia

def kornia_spec(average, **overrides):
    """kornia's macro = our macro with absent classes left out of each image's mean."""
    macro = dict(average="macro", absent_classes="exclude") if average == "macro" else {}
    return DiceSpec.preset("kornia", **macro, **overrides)


KORNIA_GRID = list(itertools.product(("micro", "macro"), (None, (0.5, 2.0, 1.0, 3.0)), (None, 255), (1e-8, 1e-3)))


@pytest.mark.parametrize("average,weight,ignore_index,eps", KORNIA_GRID)
def test_kornia_dice_loss(average, weight, ignore_index, eps):
    seed = KORNIA_GRID.index((average, weight, ignore_index, eps))
    logits, labels = random_inputs((3, 9, 7), 4, torch.float64, seed=seed, ignore_index=ignore_index,
                                   empty_classes=(3,) if seed % 2 else ())
    w = None if weight is None else torch.tensor(weight, dtype=torch.float64)
    spec = kornia_spec(average, weight=weight, ignore_index=ignore_index, smooth_dr=eps)
    theirs = loss_and_grad(
        lambda x: kornia_losses.dice_loss(x, labels, average=average, eps=eps, weight=w, ignore_index=ignore_index),
        logits)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits), theirs, relation=str(spec))


@pytest.mark.parametrize("average", ["micro", "macro"])
def test_kornia_large_input_path(average):
    """From 2**15 float32 logits kornia takes a gather/scatter path without a one-hot target."""
    logits, labels = random_inputs((2, 64, 64), 4, torch.float32, seed=21, ignore_index=-100, empty_classes=(1,))
    assert logits.numel() >= 2**15
    spec = kornia_spec(average, ignore_index=-100)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits),
                loss_and_grad(lambda x: kornia_losses.dice_loss(x, labels, average=average), logits),
                tol=dict(loss=1e-6, grad=1e-9))


def test_kornia_weighted_micro_has_no_w_squared_bug():
    """kornia 0.9.0 weighs the micro intersection once: a perfect prediction scores 1 (loss 0) with any weight."""
    labels = random_inputs((2, 6, 5), 4, seed=7)[1]
    perfect = F.one_hot(labels, 4).movedim(-1, 1).double() * 60.0
    weight = torch.tensor([2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    assert kornia_losses.dice_loss(perfect, labels, weight=weight).item() < 1e-9
    assert dice_impls.dice_loss(perfect, labels, kornia_spec("micro", weight=(2.0,) * 4)).item() < 1e-9


def test_kornia_all_ignored_with_eps_zero_diverges():
    """Divergence, by design: an image whose pixels are all ignored has an empty denominator. kornia
    scores it 0 (loss 1) whatever eps; ours scores an empty denominator 1 (loss 0). With kornia's
    default eps=1e-8 both give loss 1."""
    logits, _ = random_inputs((1, 5, 4), 3, torch.float64, seed=8)
    ignored = torch.full((1, 5, 4), -100)
    assert kornia_losses.dice_loss(logits, ignored, eps=0.0).item() == 1.0
    assert dice_impls.dice_loss(logits, ignored, kornia_spec("micro", ignore_index=-100, smooth_dr=0.0)).item() == 0.0
    assert kornia_losses.dice_loss(logits, ignored).item() == 1.0
    assert dice_impls.dice_loss(logits, ignored, kornia_spec("micro", ignore_index=-100)).item() == 1.0
    for eps in (0.0, 1e-8):  # macro: no present class -> loss 1 on both sides
        assert kornia_losses.dice_loss(logits, ignored, average="macro", eps=eps).item() == 1.0
        spec = kornia_spec("macro", ignore_index=-100, smooth_dr=eps)
        assert dice_impls.dice_loss(logits, ignored, spec).item() == 1.0


def test_kornia_default_ignore_index():
    """kornia ignores label -100 by default, and so does preset "kornia"."""
    logits, labels = random_inputs((2, 6, 6), 3, torch.float64, seed=9, ignore_index=-100)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("kornia")), logits),
                loss_and_grad(lambda x: kornia_losses.dice_loss(x, labels), logits))


# --------------------------------------------------------------------------------------- torchmetrics

@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("include_background", [True, False])
def test_torchmetrics_dice_score(per_image, include_background):
    """Hard per-class Dice equals torchmetrics' dice_score(average="none"), NaN where a class is
    absent from prediction and target alike (both sides' empty-class value)."""
    gen = torch.Generator().manual_seed(10 + per_image + 2 * include_background)
    pred = torch.randint(0, 4, (3, 9, 8), generator=gen)
    target = torch.randint(0, 4, (3, 9, 8), generator=gen)
    pred[0][pred[0] == 3] = 0  # class 3 absent from image 0 in both maps
    target[0][target[0] == 3] = 1
    theirs = tm_segmentation.dice_score(pred, target, 4, include_background=include_background, average="none",
                                        input_format="index",
                                        aggregation_level="samplewise" if per_image else "global")
    ours = metrics.dice(pred, target, 4, per_image=per_image)
    ours = ours[..., 0 if include_background else 1:].reshape(theirs.shape)
    assert torch.equal(ours.isnan(), theirs.isnan())
    if per_image:
        assert ours[0, -1].isnan()
    torch.testing.assert_close(ours.float(), theirs.float(), equal_nan=True, rtol=1e-6, atol=1e-7)


def test_torchmetrics_generalized_dice_fills_inf_weights_in_the_wrong_order():
    """Peer bug (torchmetrics 1.9.0): GeneralizedDiceScore replaces the infinite weight of a class
    absent from an image with a maximum gathered in (C, B) order from a (B, C) buffer, so an image's
    score depends on its position in the batch. If this fails, torchmetrics has fixed it: update
    docs/conventions.md."""
    target = torch.tensor([[[0, 0, 1, 1]], [[0, 1, 2, 2]]])  # class 2 absent from image 0
    pred = torch.tensor([[[0, 2, 1, 1]], [[0, 1, 2, 0]]])
    first = tm_segmentation.generalized_dice_score(pred, target, 3, input_format="index")
    swapped = tm_segmentation.generalized_dice_score(pred.flip(0), target.flip(0), 3, input_format="index")
    assert not torch.allclose(first, swapped.flip(0)), "generalized_dice_score is now batch-order equivariant"


# -------------------------------------------------------------------------------------------- nnU-Net

@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("spatial", [(9, 8), (5, 4, 6)])
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize("impl", IMPLS)
def test_nnunet_memory_efficient_soft_dice(batch, spatial, ignore, impl):
    """Preset "nnunet" (with batch=False for nnU-Net's per-image plans) against MemoryEfficientSoftDiceLoss
    as DC_and_CE_loss calls it; the ignore label is the highest label, as nnU-Net requires."""
    channels = 4
    ignore_label = channels if ignore else None
    logits, labels = random_inputs((3, *spatial), channels, torch.float64, seed=len(spatial) + 2 * batch + 4 * ignore,
                                   ignore_index=ignore_label, empty_classes=(2,))
    per_image = {} if batch else dict(batch=False)  # batch Dice is the preset's own default
    spec = DiceSpec.preset("nnunet", ignore_index=ignore_label, **per_image)
    theirs = loss_and_grad(
        lambda x: dc_and_ce_dice_term(x, labels.unsqueeze(1), batch_dice=batch, ignore_label=ignore_label), logits)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec, impl=impl), logits), theirs,
                relation=str(spec))


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
def test_nnunet_preset_against_installed_nnunetv2(batch, ignore):
    """The preset against nnunetv2 2.8.1 itself (installed with --no-deps): its
    MemoryEfficientSoftDiceLoss as DC_and_CE_loss calls it, ignored pixels relabelled 0 and masked.
    nnunetv2 2.8.1 sums in float32 even for float64 logits, hence the float32-level tolerance."""
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss
    from nnunetv2.utilities.helpers import softmax_helper_dim1

    channels = 4
    ignore_label = channels if ignore else None
    logits, labels = random_inputs((3, 6, 5, 4), channels, torch.float64, seed=30 + 2 * batch + ignore,
                                   ignore_index=ignore_label, empty_classes=(2,))
    peer = MemoryEfficientSoftDiceLoss(apply_nonlin=softmax_helper_dim1, batch_dice=batch, do_bg=False, smooth=1e-5,
                                       ddp=False)
    target = labels.unsqueeze(1)
    mask = None if ignore_label is None else (target != ignore_label)
    peer_target = target if mask is None else torch.where(mask, target, 0)
    spec = DiceSpec.preset("nnunet", ignore_index=ignore_label, batch=batch)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits),
                loss_and_grad(lambda x: peer(x, peer_target, loss_mask=mask), logits), dict(loss=1e-6, grad=1e-8))


def test_nnunet_denominator_clip_with_zero_smooth():
    """nnU-Net clips the denominator at 1e-8: with smooth=0 an all-ignored image scores 0/1e-8 = 0
    (not our empty-denominator 1), which is what the preset's min_denominator reproduces."""
    logits, labels = random_inputs((3, 6, 7), 3, torch.float64, seed=18, ignore_index=3)
    labels[1] = 3  # image 1 entirely ignored
    spec = DiceSpec.preset("nnunet", batch=False, ignore_index=3, smooth_nr=0.0, smooth_dr=0.0)
    mask = (labels != 3).unsqueeze(1)
    theirs = loss_and_grad(lambda x: memory_efficient_soft_dice(
        x, torch.where(mask, labels.unsqueeze(1), 0), batch_dice=False, smooth=0.0, loss_mask=mask.double()), logits)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits), theirs)
    per_image = dice_impls.dice_loss(logits, labels, spec.replace(reduction="none"))
    assert torch.equal(per_image[1], torch.zeros_like(per_image[1]))


def test_nnunet_negated_form_is_one_minus_dice_shifted():
    """nnU-Net returns -dc; our default form 1 - dc differs by exactly 1 with the same gradient."""
    logits, labels = random_inputs((2, 8, 8), 3, torch.float64, seed=12)
    negated = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("nnunet")), logits)
    loss, grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("nnunet", negate=False)),
                               logits)
    assert_same((loss - 1, grad), negated)


# ------------------------------------------------------------------------------------------------ smp

# smp >= 0.4 scores (I + smooth) / max(I + FP/2 + FN/2 + smooth, eps) with I = sum min(p, g): the
# preset's fp_weight = fn_weight = 1/2 and soft_label.
SMP_GRID = list(itertools.product((None, 255), (False, True), (None, (1, 2, 3))))


@pytest.mark.parametrize("ignore_index,log_loss,classes", SMP_GRID)
def test_smp_multiclass(ignore_index, log_loss, classes):
    """Preset "smp" against DiceLoss("multiclass"); ``classes`` maps to a 0/1 weight, and class 2
    absent from the batch exercises smp's zero loss for absent classes."""
    seed = SMP_GRID.index((ignore_index, log_loss, classes))
    channels = 4
    logits, labels = random_inputs((3, 7, 9), channels, torch.float64, seed=seed, ignore_index=ignore_index,
                                   empty_classes=(2,))
    weight = None if classes is None else tuple(float(c in classes) for c in range(channels))
    spec = DiceSpec.preset("smp", ignore_index=ignore_index, log_loss=log_loss, weight=weight)
    theirs = loss_and_grad(lambda x: smp_dice_loss(x, labels, "multiclass", classes=classes, log_loss=log_loss,
                                                   ignore_index=ignore_index), logits)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits), theirs, relation=str(spec))


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_smp_binary(ignore_index):
    logits, labels = random_inputs((4, 8, 8), 1, torch.float64, seed=13, ignore_index=ignore_index)
    spec = DiceSpec.preset("smp", activation="sigmoid", ignore_index=ignore_index)
    theirs = loss_and_grad(lambda x: smp_dice_loss(x, labels.unsqueeze(1), "binary", ignore_index=ignore_index),
                           logits)
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, spec), logits), theirs)


def test_smp_eps_clamp_on_tiny_soft_targets():
    """smp clamps the denominator at eps=1e-7; it binds only when sum(p) + sum(g) < 1e-7, e.g. a
    near-empty soft target with confident negatives. Gradients there are tiny: compared relatively.
    smp (since 0.4) scores with its Tversky index at alpha = beta = 1/2, whose eps clamps half the
    F-beta denominator, and with the soft-label intersection, as the preset does."""
    gen = torch.Generator().manual_seed(19)
    logits = -40 + torch.randn(2, 1, 6, 6, generator=gen, dtype=torch.float64)
    soft = torch.rand(2, 1, 6, 6, generator=gen, dtype=torch.float64) * 1e-12
    spec = DiceSpec.preset("smp", activation="sigmoid")
    loss, grad = loss_and_grad(lambda x: dice_impls.dice_loss(x, soft, spec), logits)
    peer_loss, peer_grad = loss_and_grad(lambda x: smp_dice_loss(x, soft, "binary"), logits)
    torch.testing.assert_close(loss, peer_loss, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, peer_grad, rtol=1e-9, atol=0)
    unclamped = loss_and_grad(lambda x: dice_impls.dice_loss(x, soft, spec.replace(min_denominator=0.0)), logits)[1]
    assert not torch.allclose(unclamped, peer_grad, rtol=1e-3, atol=0)


def test_smp_absent_class_counts_zero():
    """Peer behaviour reproduced by the preset: with an empty target, smp's loss is 0 however much
    foreground is predicted, so false positives on empty batches are never penalised."""
    empty = torch.zeros(2, 6, 6, dtype=torch.long)
    all_foreground = torch.full((2, 1, 6, 6), 8.0, dtype=torch.float64)
    assert smp_dice_loss(all_foreground, empty.unsqueeze(1), "binary").item() == 0.0
    spec = DiceSpec.preset("smp", activation="sigmoid")
    assert dice_impls.dice_loss(all_foreground, empty, spec).item() == 0.0
    assert dice_impls.dice_loss(all_foreground, empty, spec.replace(absent_classes="include")).item() > 0.99


def test_smp_log_loss_clamp_diverges_below_eps():
    """Divergence: smp clamps the score at eps=1e-7 before the log; ours clamps at the smallest
    normal float, so a score below 1e-7 gives a larger loss here. Above 1e-7 they agree."""
    labels = torch.ones(1, 6, 6, dtype=torch.long)
    hopeless = torch.full((1, 1, 6, 6), -35.0, dtype=torch.float64)  # score ~ 2 sigmoid(-35) << 1e-7
    spec = DiceSpec.preset("smp", activation="sigmoid", log_loss=True)
    theirs = smp_dice_loss(hopeless, labels.unsqueeze(1), "binary", log_loss=True).item()
    ours = dice_impls.dice_loss(hopeless, labels, spec).item()
    assert theirs == pytest.approx(-torch.log(torch.tensor(1e-7, dtype=torch.float64)).item())
    p = torch.sigmoid(torch.tensor(-35.0, dtype=torch.float64))
    score = 2 * p / (p + 1)  # 2 sum(p g) / (sum p + sum g) with every pixel foreground
    assert ours == pytest.approx(-torch.log(score).item(), rel=1e-9)
    assert ours > theirs + 10


# ----------------------------------------------------------------------------------------------- seed

def seed_loss(logits, labels, channels):
    return Dice_loss(logits, seed_target(labels, channels, logits.dtype))


@pytest.mark.parametrize("logits_size", [(8, 10), (5, 6)])  # same size, and both axes smaller (resized)
@pytest.mark.parametrize("impl", IMPLS)
def test_seed_dice_loss(logits_size, impl):
    """Preset "seed" against the seed's Dice_loss, labels >= C in its dropped extra channel."""
    channels = 4
    gen = torch.Generator().manual_seed(14)
    logits = torch.randn(3, channels, *logits_size, generator=gen, dtype=torch.float64) * 2
    labels = random_inputs((3, 8, 10), channels, seed=15, out_of_range_fraction=0.2)[1]
    labels[0, 0, :3] = 255  # any label >= C lands in the extra channel
    assert (labels >= channels).any()
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("seed"), impl=impl), logits),
                loss_and_grad(lambda x: seed_loss(x, labels, channels), logits))


def test_seed_one_axis_mismatch_is_not_resized_by_the_seed():
    """The seed resizes only when ``h != ht and w != wt``: with one axis equal it skips the resize
    and crashes on the pixel-count mismatch. Our preset resizes on any mismatch and then equals the
    seed's loss on logits resized beforehand."""
    channels = 3
    gen = torch.Generator().manual_seed(16)
    logits = torch.randn(2, channels, 8, 6, generator=gen, dtype=torch.float64)  # height equal, width not
    labels = random_inputs((2, 8, 10), channels, seed=17)[1]
    with pytest.raises(RuntimeError):
        seed_loss(logits, labels, channels)
    resized = lambda x: F.interpolate(x, size=(8, 10), mode="bilinear", align_corners=True)  # noqa: E731
    assert_same(loss_and_grad(lambda x: dice_impls.dice_loss(x, labels, DiceSpec.preset("seed")), logits),
                loss_and_grad(lambda x: seed_loss(resized(x), labels, channels), logits))
