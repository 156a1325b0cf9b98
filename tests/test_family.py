"""The Dice family of ``DiceSpec``: Tversky, focal Tversky, Jaccard, generalized Dice, soft labels.

Every implementation against the float64 reference (values and gradients, 2-D and 3-D, odd sizes,
per image and batch, ignored pixels, absent classes; float32/bf16/fp16 with the tolerances of
tests/helpers.py, float64 with ``F64`` below); ``fused`` through its C++ and (interpreted) Triton
kernels with poisoned outputs; the special cases the docs state as identities; the absent-class
rule of generalized Dice; and the forms against the installed MONAI. The 2-D cases of every field
also run in tests/test_implementations.py (``SPEC_CASES``), where ``formula_loss`` checks the
reference's scoring with Python floats.

Worst errors measured on the family cases of test_implementations.py, seeds 0-19 (torch 2.13.0
CPU), against the tolerances of helpers.TOLERANCES: float32 loss 9.4e-8, gradient 1.0e-6 (1e-6,
1e-5); bfloat16 naive/vectorized loss 1.4e-3, gradient 1.4e-2 (8e-3, 0.2); float16 loss 1.4e-4,
gradient 1.9e-3 (1e-3, 3e-2); fused bfloat16/float16 gradient 3.8e-3 / 4.6e-4 (2e-2, 2e-3).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # no GPU in CI: the Triton kernels run interpreted

import warnings

import monai.losses as monai_losses  # dev dependency: a missing one fails, it is not skipped
import pytest
import torch
import torch.nn.functional as F

import dice_impls
from dice_impls import DiceSpec, DiceStatistics, dice_loss, loss_from_statistics
from dice_impls.fused import interface as fused_interface
from dice_impls.fused import fused_statistics
from helpers import HALF_DTYPES, assert_matches_reference, error, random_inputs, refuses_float_target, tolerance

COMPARED = [name for name in dice_impls.IMPLEMENTATIONS if name != "reference"]
DTYPES = [torch.float32, *HALF_DTYPES]
# float64 logits: every implementation computes in float64; measured worst 4.4e-16 (loss) and
# 2.3e-15 (gradient) over the cases below.
F64 = dict(loss=1e-13, grad=1e-12)

# (id, spec fields, random_inputs keywords)
FAMILY = [
    ("tversky", dict(fp_weight=0.3, fn_weight=0.7), {}),
    ("tversky-ignore-uint8", dict(fp_weight=0.7, fn_weight=0.3, ignore_index=255),
     dict(ignore_index=255, label_dtype=torch.uint8)),
    ("focal-tversky-0.75", dict(fp_weight=0.3, fn_weight=0.7, focal_gamma=0.75), {}),
    ("focal-dice-2-absent", dict(focal_gamma=2.0), dict(empty_classes=(1,))),
    ("jaccard", dict(jaccard=True), {}),
    ("jaccard-squared-no-background", dict(jaccard=True, squared=True, include_background=False), {}),
    ("generalized-square-absent", dict(generalized="square"), dict(empty_classes=(2,))),
    ("generalized-simple-ignore", dict(generalized="simple", ignore_index=-1), dict(ignore_index=-1)),
    ("generalized-uniform-sigmoid", dict(generalized="uniform", activation="sigmoid"), {}),
    ("soft-label-labels", dict(soft_label=True, fp_weight=0.4, fn_weight=0.6), {}),
    ("soft-label-soft", dict(soft_label=True), dict(target_kind="soft")),
    ("soft-label-soft-generalized", dict(soft_label=True, generalized="square", focal_gamma=1.5),
     dict(target_kind="soft")),
]
FAMILY_IDS = [case[0] for case in FAMILY]
ODD_SHAPES = {"2d": (3, 7, 9), "3d": (2, 3, 5, 7)}


def family_inputs(case, shape, dtype, batch, seed=0):
    _, fields, input_kwargs = case
    logits, target = random_inputs(shape, 3, dtype, seed=seed, **input_kwargs)
    return logits, target, DiceSpec(batch=batch, **fields)


@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", list(ODD_SHAPES.values()), ids=list(ODD_SHAPES))
@pytest.mark.parametrize("case", FAMILY, ids=FAMILY_IDS)
@pytest.mark.parametrize("impl", COMPARED)
def test_family_matches_reference(impl, case, shape, dtype, batch):
    assert_matches_reference(impl, *family_inputs(case, shape, dtype, batch))


@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("case", FAMILY, ids=FAMILY_IDS)
@pytest.mark.parametrize("impl", COMPARED)
def test_family_float64_matches_reference(impl, case, batch):
    logits, target, spec = family_inputs(case, ODD_SHAPES["3d"], torch.float64, batch, seed=1)
    if refuses_float_target(impl, logits, target, spec):
        return  # the refusal is what is asserted
    x = logits.clone().requires_grad_()
    x_ref = logits.clone().requires_grad_()
    loss = dice_loss(x, target, spec, impl=impl)
    expected = dice_loss(x_ref, target, spec, impl="reference")
    loss.backward()
    expected.backward()
    assert loss.dtype == torch.float64 and x.grad.dtype == torch.float64
    assert error(loss, expected, 1.0) <= F64["loss"]
    assert error(x.grad, x_ref.grad, 1e-300) <= F64["grad"]


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer a fused kernel must overwrite starts as NaN."""
    monkeypatch.setattr(fused_interface, "output_buffer",
                        lambda shape, device, dtype: torch.full(shape, float("nan"), device=device, dtype=dtype))


# Triton runs interpreted (slow): a small 2-D and a small 3-D case.
FUSED_SHAPES = {"cpp": [(3, 7, 9), (2, 3, 5, 7)], "triton": [(2, 5, 7), (1, 3, 4, 5)]}


@pytest.mark.parametrize("backend", list(FUSED_SHAPES))
@pytest.mark.parametrize("case", [c for c in FAMILY if c[2].get("target_kind") is None], ids=lambda c: c[0])
def test_fused_backends_match_reference(poisoned, backend, case):
    for shape in FUSED_SHAPES[backend]:
        for batch in (False, True):
            logits, target, spec = family_inputs(case, shape, torch.float32, batch, seed=2)
            x = logits.clone().requires_grad_()
            loss = loss_from_statistics(fused_statistics(x, target, spec, backend=backend), spec)
            x_ref = logits.double().requires_grad_()
            expected = dice_loss(x_ref, target, spec, impl="reference")
            loss.backward()
            expected.backward()
            assert error(loss, expected, 1.0) <= 1e-6, (backend, shape, spec)
            assert error(x.grad, x_ref.grad, torch.finfo(torch.float32).tiny) <= 1e-5, (backend, shape, spec)


# The folded C++ operator scores the whole family itself, for every reduction: each label-map case
# unreduced and summed (with class weights and absent-class rules where the case allows them),
# against the reference, with a random upstream gradient on the per-unit losses.
LABEL_MAP_FAMILY = [c for c in FAMILY if c[2].get("target_kind") is None]
REDUCED_FIELDS = {"none": dict(weight=(0.5, 2.0, 1.0), absent_classes="exclude"),
                  "sum": dict(absent_classes="zero")}


@pytest.mark.parametrize("reduction", ["none", "sum", "micro-none"])
@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("shape", list(ODD_SHAPES.values()), ids=list(ODD_SHAPES))
@pytest.mark.parametrize("case", LABEL_MAP_FAMILY, ids=[c[0] for c in LABEL_MAP_FAMILY])
def test_folded_operator_scores_every_reduction(case, shape, dtype, batch, reduction, folded_calls):
    logits, target, spec = family_inputs(case, shape, dtype, batch, seed=3)
    fields = dict(reduction=reduction.removeprefix("micro-"))
    if spec.generalized is None:  # generalized Dice has its own class weights and pooling
        micro = reduction == "micro-none"
        fields.update(dict(average="micro", weight=(1.0, 3.0, 0.5)) if micro else REDUCED_FIELDS[reduction])
    spec = spec.replace(**fields)
    x, x_ref = logits.clone().requires_grad_(), logits.double().requires_grad_()
    loss = dice_loss(x, target, spec, impl="fused")
    expected = dice_loss(x_ref, target, spec, impl="reference")
    assert len(folded_calls) == 1 and loss.shape == expected.shape
    upstream = torch.rand(expected.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    (loss * upstream.to(loss.dtype)).sum().backward()
    (expected * upstream).sum().backward()
    tol = tolerance("fused", dtype)
    assert error(loss, expected, 1.0) <= tol.loss, spec
    assert error(x.grad, x_ref.grad, torch.finfo(dtype).tiny) <= tol.grad, spec


# --- the special cases docs/conventions.md states -------------------------------------------------

def reference(logits, target, **fields):
    return dice_loss(logits.double(), target, impl="reference", reduction="none", **fields)


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
def test_fbeta_is_tversky_with_the_smoothing_divided_by_one_plus_beta_squared(beta):
    logits, labels = random_inputs((2, 6, 5), 3, seed=40, empty_classes=(2,))
    smooth = dict(smooth_nr=0.3, smooth_dr=0.7, min_denominator=2.0)
    scale = 1 + beta**2
    tversky = reference(logits, labels, fp_weight=1 / scale, fn_weight=beta**2 / scale,
                        **{k: v / scale for k, v in smooth.items()})
    torch.testing.assert_close(reference(logits, labels, beta=beta, **smooth), tversky, rtol=1e-13, atol=1e-13)
    assert not torch.allclose(reference(logits, labels, fp_weight=1 / scale, fn_weight=beta**2 / scale, **smooth),
                              tversky, rtol=1e-6), "the smoothing's scale matters on this case"


def test_jaccard_is_tversky_one_one_with_the_smoothing_halved():
    logits, labels = random_inputs((2, 6, 5), 3, seed=41, empty_classes=(1,))
    smooth = dict(smooth_nr=0.4, smooth_dr=0.2, min_denominator=3.0)
    tversky = reference(logits, labels, fp_weight=1.0, fn_weight=1.0, **{k: v / 2 for k, v in smooth.items()})
    torch.testing.assert_close(reference(logits, labels, jaccard=True, **smooth), tversky, rtol=1e-13, atol=1e-13)
    # IoU = tp / (P + G - tp) without smoothing.
    stats = dice_impls.dice_statistics(logits.double(), labels, impl="reference")
    iou = stats.intersection / (stats.pred_sum + stats.target_sum - stats.intersection)
    torch.testing.assert_close(reference(logits, labels, jaccard=True, smooth_nr=0.0, smooth_dr=0.0), 1 - iou)


def test_generalized_uniform_is_the_micro_average():
    logits, labels = random_inputs((2, 6, 5), 4, seed=42)
    for fields in ({}, dict(fp_weight=0.2, fn_weight=0.8), dict(jaccard=True, include_background=False)):
        torch.testing.assert_close(reference(logits, labels, generalized="uniform", **fields),
                                   reference(logits, labels, average="micro", **fields), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("gamma", [0.5, 0.75, 2.0, 3.0])
def test_focal_gamma_raises_each_class_loss_to_gamma(gamma):
    logits, labels = random_inputs((2, 6, 5), 3, seed=43)
    for fields in (dict(fp_weight=0.3, fn_weight=0.7), dict(jaccard=True), dict(generalized="simple")):
        plain = reference(logits, labels, **fields)
        assert (plain > 0).all()
        torch.testing.assert_close(reference(logits, labels, focal_gamma=gamma, **fields), plain**gamma)


def test_focal_gamma_below_one_at_a_perfect_score_has_zero_gradient():
    probs = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]]], requires_grad=True)
    labels = torch.tensor([[[0, 1], [1, 0]]])
    for impl in dice_impls.IMPLEMENTATIONS:
        probs.grad = None
        loss = dice_loss(probs, labels, impl=impl, activation="none", focal_gamma=0.5, smooth_nr=0.0, smooth_dr=0.0)
        loss.backward()
        assert loss.item() == 0.0 and torch.equal(probs.grad, torch.zeros_like(probs.grad)), impl


def test_soft_label_equals_the_ordinary_form_on_hard_targets():
    logits, labels = random_inputs((2, 5, 4, 3), 3, seed=44, empty_classes=(1,))
    onehot = F.one_hot(labels, 3).movedim(-1, 1).double()
    for impl in dice_impls.IMPLEMENTATIONS:
        for fields in ({}, dict(generalized="square"), dict(fp_weight=0.3, fn_weight=0.7), dict(jaccard=True)):
            ordinary = dice_loss(logits, labels, impl=impl, reduction="none", **fields)
            torch.testing.assert_close(dice_loss(logits, labels, impl=impl, reduction="none", soft_label=True, **fields),
                                       ordinary, rtol=0, atol=0)
            if not dice_impls.IMPLEMENTATIONS[impl].label_maps_only:
                torch.testing.assert_close(
                    dice_loss(logits, onehot.float(), impl=impl, reduction="none", soft_label=True, **fields), ordinary)


@pytest.mark.parametrize("impl", [name for name in dice_impls.IMPLEMENTATIONS if name != "fused"])
def test_soft_label_scores_a_soft_target_against_itself_as_perfect(impl):
    # MONAI #8094: with sum p g, DiceLoss(x, x) is not 0 for a soft x; with soft_label it is.
    _, soft = random_inputs((2, 6, 5), 3, target_kind="soft", seed=45)
    for fields in ({}, dict(jaccard=True), dict(fp_weight=0.3, fn_weight=0.7), dict(generalized="square")):
        spec = DiceSpec(activation="none", smooth_nr=0.0, smooth_dr=0.0, reduction="none", **fields)
        assert float(dice_loss(soft, soft, spec, impl=impl).max()) > 0.1
        assert float(dice_loss(soft, soft, spec.replace(soft_label=True), impl=impl).abs().max()) < 1e-6


def test_soft_label_overlap_is_wang_et_al_semimetric_form():
    logits, soft = random_inputs((2, 6, 5), 3, torch.float64, target_kind="soft", seed=46, target_dtype=torch.float64)
    spec = DiceSpec(soft_label=True)
    p = torch.softmax(logits, 1)
    expected = ((p.sum((2, 3)) + soft.sum((2, 3)) - (p - soft).abs().sum((2, 3))) / 2)
    for impl in ("reference", "naive", "vectorized", "mixed"):
        stats = dice_impls.dice_statistics(logits, soft, spec, impl=impl)
        torch.testing.assert_close(stats.intersection, expected, rtol=1e-13, atol=1e-13)


# --- generalized Dice: the absent-class rule ------------------------------------------------------

def stats_of(tp, pred, truth):
    return DiceStatistics(*(torch.tensor(v, dtype=torch.float64) for v in (tp, pred, truth)))


def test_generalized_absent_class_takes_the_largest_finite_weight_of_its_unit():
    # Unit 0: class 1 absent; unit 1: classes 0 and 2 absent.
    stats = stats_of([[3.0, 0.0, 1.0], [0.0, 2.0, 0.0]], [[4.0, 1.0, 2.0], [1.0, 3.0, 0.5]],
                     [[5.0, 0.0, 2.0], [0.0, 4.0, 0.0]])
    spec = DiceSpec(generalized="square", smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    w0 = [1 / 25, 1 / 4, 1 / 4]
    w1 = [1 / 16, 1 / 16, 1 / 16]
    expected = [[1 - 2 * sum(w * t for w, t in zip(w0, [3, 0, 1])) / sum(w * s for w, s in zip(w0, [9, 1, 4]))],
                [1 - 2 * sum(w * t for w, t in zip(w1, [0, 2, 0])) / sum(w * s for w, s in zip(w1, [1, 7, 0.5]))]]
    torch.testing.assert_close(loss_from_statistics(stats, spec), torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("smooth", [(1e-5, 1e-5), (0.5, 2.0), (0.0, 0.0), (1.0, 0.0)])
def test_generalized_unit_without_a_present_class_scores_smooth_nr_over_smooth_dr(smooth):
    stats = stats_of([[0.0, 0.0], [1.0, 0.5]], [[2.0, 1.0], [2.0, 1.0]], [[0.0, 0.0], [1.0, 2.0]])
    stats = DiceStatistics(*(s.clone().requires_grad_() for s in stats))
    smooth_nr, smooth_dr = smooth
    spec = DiceSpec(generalized="square", smooth_nr=smooth_nr, smooth_dr=smooth_dr, reduction="none")
    loss = loss_from_statistics(stats, spec)
    assert torch.isfinite(loss).all()
    assert loss[0, 0].item() == (0.0 if smooth_dr == 0 else 1 - smooth_nr / smooth_dr)
    loss.sum().backward()
    assert torch.equal(stats.pred_sum.grad[0], torch.zeros(2, dtype=torch.float64))


def test_generalized_weight_whose_reciprocal_overflows_counts_as_absent():
    # float32: 1 / (1e-30)**2 is inf, so the class is treated like an absent one, never NaN.
    stats = DiceStatistics(*(torch.tensor(v) for v in ([[1e-30, 2.0]], [[1.0, 3.0]], [[1e-30, 4.0]])))
    loss = loss_from_statistics(stats, DiceSpec(generalized="square", smooth_nr=0.0, smooth_dr=0.0))
    w = 1 / 16
    torch.testing.assert_close(loss, torch.tensor(1 - 2 * w * (1e-30 + 2.0) / (w * (1.0 + 1e-30 + 7.0))))


def test_generalized_weights_carry_no_gradient():
    # The weights are constants: the gradient w.r.t. the target sums is zero, as with fused's
    # non-differentiable target_sum.
    stats = DiceStatistics(*(torch.tensor(v, dtype=torch.float64, requires_grad=True)
                             for v in ([[1.0, 2.0]], [[3.0, 3.0]], [[2.0, 4.0]])))
    spec = DiceSpec(generalized="square", smooth_nr=0.0, smooth_dr=0.0)
    loss_from_statistics(stats, spec).backward()
    w = torch.tensor([1 / 4, 1 / 16], dtype=torch.float64)
    num, den = 2 * (w * stats.intersection).sum(), (w * (stats.pred_sum + stats.target_sum)).sum()
    torch.testing.assert_close(stats.target_sum.grad, (num / den**2 * w).view(1, 2).detach())


# --- the forms against the installed MONAI ---------------------------------------------------------

def monai_and_ours(monai_loss, ours, logits, target):
    x, y = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = monai_loss(x, target)
    actual = ours(y)
    expected.backward()
    actual.backward()
    return (actual, expected), (y.grad, x.grad)


MONAI_CASES = [
    # (id, MONAI class, its keywords, our spec fields, target kind, spatial shape)
    ("tversky", "TverskyLoss", dict(alpha=0.3, beta=0.7), dict(fp_weight=0.3, fn_weight=0.7), "labels", (6, 5)),
    ("tversky-3d-batch", "TverskyLoss", dict(alpha=0.8, beta=0.2, batch=True, include_background=False),
     dict(fp_weight=0.8, fn_weight=0.2, batch=True, include_background=False), "labels", (3, 4, 5)),
    ("tversky-soft-label", "TverskyLoss", dict(alpha=0.4, beta=0.6, soft_label=True),
     dict(fp_weight=0.4, fn_weight=0.6, soft_label=True), "soft", (6, 5)),
    ("jaccard", "DiceLoss", dict(jaccard=True), dict(jaccard=True), "labels", (6, 5)),
    ("jaccard-3d-squared-batch", "DiceLoss", dict(jaccard=True, squared_pred=True, batch=True),
     dict(jaccard=True, squared=True, batch=True), "labels", (3, 4, 5)),
    ("dice-soft-label", "DiceLoss", dict(soft_label=True), dict(soft_label=True), "soft", (6, 5)),
    ("dice-soft-label-3d-batch", "DiceLoss", dict(soft_label=True, batch=True, include_background=False),
     dict(soft_label=True, batch=True, include_background=False), "soft", (3, 4, 5)),
    *[(f"generalized-{w}-{'batch' if batch else 'image'}-{'bg' if bg else 'nobg'}", "GeneralizedDiceLoss",
       dict(w_type=w, batch=batch, include_background=bg), dict(generalized=w, batch=batch, include_background=bg),
       "labels-absent", (6, 5))
      for w in ("square", "simple", "uniform") for batch in (False, True) for bg in (True, False)],
    ("generalized-soft-label", "GeneralizedDiceLoss", dict(soft_label=True), dict(generalized="square", soft_label=True),
     "soft", (3, 4, 5)),
]


def monai_inputs(kind, spatial, seed):
    channels = 4
    if kind == "soft":
        logits, target = random_inputs((2, *spatial), channels, torch.float64, target_kind="soft", seed=seed,
                                       target_dtype=torch.float64)
        return logits, target, target
    # Image 0 lacks class 2; image 1 holds background only: with include_background=False it has
    # no present class, the case of the absent-class rule.
    logits, labels = random_inputs((2, *spatial), channels, torch.float64, seed=seed, empty_classes=(2,))
    if kind == "labels-absent":
        labels[1] = 0
    return logits, labels, F.one_hot(labels, channels).movedim(-1, 1).double()


@pytest.mark.parametrize("case", MONAI_CASES, ids=[c[0] for c in MONAI_CASES])
def test_family_matches_monai(case):
    _, monai_class, monai_kwargs, fields, kind, spatial = case
    logits, ours_target, monai_target = monai_inputs(kind, spatial, seed=len(spatial))
    monai_loss = getattr(monai_losses, monai_class)(softmax=True, **monai_kwargs)
    # MONAI computes generalized weights from a float32 copy of G: agreement to float32 rounding.
    f64 = 1e-7 if monai_class == "GeneralizedDiceLoss" else 1e-12
    tolerances = {"reference": (f64, f64), "vectorized": (f64, f64), "fused": (1e-6, 1e-5)}  # fused: float32
    for impl, (loss_tol, grad_tol) in tolerances.items():
        if impl == "fused" and kind == "soft":
            continue  # label maps only
        x = logits.float() if impl == "fused" else logits
        (actual, expected), (grad, grad_expected) = monai_and_ours(
            monai_loss, lambda v: dice_loss(v, ours_target, impl=impl, **fields), x, monai_target)
        assert error(actual, expected, 1.0) <= loss_tol, (impl, float(actual), float(expected))
        assert error(grad, grad_expected, 1e-300) <= grad_tol, impl
