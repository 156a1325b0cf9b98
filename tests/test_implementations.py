"""Every registered implementation against the float64 reference: loss and gradient, every option.

Implementations are read from the registry at collection time, so one registered later is covered
without editing this file. The reference itself is checked against ``formula_loss``, the
specification written out with Python floats, independent of ``dice_impls.score``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import dice_impls
from dice_impls import DiceLoss, DiceSpec, dice_loss, dice_statistics, loss_from_statistics
from dice_impls.vectorized import activate
from helpers import HALF_DTYPES, assert_matches_reference, random_inputs, refuses_float_target

COMPARED = [name for name in dice_impls.IMPLEMENTATIONS if name != "reference"]
ALL_IMPLS = list(dice_impls.IMPLEMENTATIONS)
DTYPES = [torch.float32, *HALF_DTYPES]
GRADCHECKED = [name for name in ("reference", "naive", "vectorized", "mixed") if name in dice_impls.IMPLEMENTATIONS]


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- the oracle checked against the specification -------------------------------------------------

def formula_loss(logits: torch.Tensor, target: torch.Tensor, spec: DiceSpec):
    """DiceSpec's formula with Python floats and loops (small inputs only).

    Returns a float, or a list of lists of floats for ``reduction="none"``.
    """
    x = logits.double()
    images, channels = x.shape[:2]
    probs = {"softmax": lambda: torch.softmax(x, 1), "sigmoid": lambda: torch.sigmoid(x), "none": lambda: x}
    p = probs[spec.activation]().reshape(images, channels, -1).tolist()
    if target.is_floating_point():
        g = target.double().reshape(images, channels, -1).tolist()
        keep = [[1.0] * len(p[0][0]) for _ in range(images)]
    else:
        labels = target.reshape(images, -1).tolist()
        wanted = [1] if channels == 1 else list(range(channels))
        g = [[[1.0 if lab == wanted[c] else 0.0 for lab in row] for c in range(channels)] for row in labels]
        keep = [[0.0 if lab == spec.ignore_index else 1.0 for lab in row] for row in labels]
    power = 2 if spec.squared else 1
    soft_overlap = spec.soft_label and power == 1 and target.is_floating_point()

    def sums(i, c):
        pairs = list(zip(p[i][c], g[i][c], keep[i]))
        overlap = (lambda a, b: min(a, b)) if soft_overlap else (lambda a, b: a * b)
        return (sum(m * overlap(a, b) for a, b, m in pairs), sum(m * a**power for a, _, m in pairs),
                sum(m * b**power for _, b, m in pairs))

    per_image = [[sums(i, c) for c in range(channels)] for i in range(images)]
    if spec.batch:
        per_image = [[tuple(sum(img[c][k] for img in per_image) for k in range(3)) for c in range(channels)]]
    weight = list(spec.weight) if spec.weight else [1.0] * channels
    classes = list(range(channels)) if spec.include_background else list(range(1, channels))
    b2 = spec.beta**2

    def terms(tp, pred, truth):
        """(numerator, denominator) before smoothing."""
        if spec.jaccard:
            return 2 * tp, 2 * (pred + truth - tp)
        if spec.fp_weight is not None:
            return tp, tp + spec.fp_weight * (pred - tp) + spec.fn_weight * (truth - tp)
        return (1 + b2) * tp, pred + b2 * truth

    def loss_of(num, den):
        den = max(den + spec.smooth_dr, spec.min_denominator)
        score = 1.0 if den == 0 else (num + spec.smooth_nr) / den
        if spec.log_loss:
            return -math.log(max(score, torch.finfo(torch.float32).tiny))
        if spec.negate:
            return -score
        return max(1 - score, 0.0) ** spec.focal_gamma if spec.focal_gamma != 1 else 1 - score

    def generalized_weights(unit):
        if spec.generalized == "uniform":
            return [1.0] * len(classes)
        power_of_g = 2 if spec.generalized == "square" else 1
        raw = [1 / unit[c][2] ** power_of_g if unit[c][2] > 0 else None for c in classes]
        largest = max((w for w in raw if w is not None), default=0.0)
        return [largest if w is None else w for w in raw]

    rows, row_weights = [], []
    for unit in per_image:
        if spec.average == "micro" or spec.generalized:
            pool = generalized_weights(unit) if spec.generalized else [weight[c] for c in classes]
            pooled = [sum(w * terms(*unit[c])[k] for w, c in zip(pool, classes)) for k in range(2)]
            rows.append([loss_of(*pooled)])
            row_weights.append([1.0])
            continue
        losses = [loss_of(*terms(*unit[c])) for c in classes]
        weights = [weight[c] for c in classes]
        present = [unit[c][2] > 0 for c in classes]
        if spec.absent_classes == "zero":
            losses = [l if here else 0.0 for l, here in zip(losses, present)]
        elif spec.absent_classes == "exclude":
            weights = [w if here else 0.0 for w, here in zip(weights, present)]
        rows.append(losses)
        row_weights.append(weights)
    weighted = [[l * w for l, w in zip(ls, ws)] for ls, ws in zip(rows, row_weights)]
    if spec.reduction == "none":
        return weighted
    if spec.reduction == "sum":
        return sum(map(sum, weighted))
    return sum(sum(wl) / sum(ws) if sum(ws) > 0 else 1.0 for wl, ws in zip(weighted, row_weights)) / len(rows)


# (id, spec fields, random_inputs keywords): every DiceSpec field and each of its values.
C = 4
SPEC_CASES = [
    ("default", {}, {}),
    ("sigmoid", dict(activation="sigmoid"), {}),
    ("activation-none", dict(activation="none"), dict(probabilities=True)),
    ("smooth-0", dict(smooth_nr=0.0, smooth_dr=0.0), {}),
    ("smooth-1", dict(smooth_nr=1.0, smooth_dr=1.0), {}),
    ("smooth-nr-only", dict(smooth_nr=0.5, smooth_dr=0.0), {}),
    ("smooth-dr-only", dict(smooth_nr=0.0, smooth_dr=2.0), {}),
    ("beta-0.5", dict(beta=0.5), {}),
    ("beta-2", dict(beta=2.0), {}),
    ("squared", dict(squared=True), {}),
    ("squared-soft", dict(squared=True), dict(target_kind="soft")),
    ("batch", dict(batch=True), {}),
    ("no-background", dict(include_background=False), {}),
    ("no-background-batch", dict(include_background=False, batch=True), {}),
    ("ignore-outside", dict(ignore_index=255), dict(ignore_index=255)),
    ("ignore-negative", dict(ignore_index=-1), dict(ignore_index=-1)),
    ("ignore-inside", dict(ignore_index=2), dict(ignore_index=2)),
    ("ignore-unused", dict(ignore_index=255), {}),
    ("weight", dict(weight=(0.5, 1.0, 2.0, 0.0)), {}),
    ("weight-no-background", dict(weight=(3.0, 1.0, 2.0, 0.5), include_background=False), {}),
    ("reduction-none", dict(reduction="none"), {}),
    ("reduction-none-batch", dict(reduction="none", batch=True), {}),
    ("reduction-sum", dict(reduction="sum"), {}),
    ("log-loss", dict(log_loss=True), {}),
    ("log-loss-batch", dict(log_loss=True, batch=True, smooth_nr=0.0, smooth_dr=0.0), {}),
    ("micro", dict(average="micro"), {}),
    ("micro-weight-no-background", dict(average="micro", weight=(1.0, 2.0, 0.5, 1.0), include_background=False), {}),
    ("min-denominator", dict(min_denominator=1e-8, smooth_nr=0.0, smooth_dr=0.0), {}),
    ("min-denominator-active", dict(min_denominator=50.0), {}),
    ("absent-include", dict(absent_classes="include"), dict(empty_classes=(1,))),
    ("absent-zero", dict(absent_classes="zero"), dict(empty_classes=(1, 3))),
    ("absent-exclude", dict(absent_classes="exclude"), dict(empty_classes=(1,))),
    ("absent-exclude-none", dict(absent_classes="exclude", reduction="none"), dict(empty_classes=(2,))),
    ("negate", dict(negate=True), {}),
    ("out-of-range-zero-target", dict(out_of_range="zero_target"), dict(out_of_range_fraction=0.2)),
    ("zero-target-and-ignore", dict(out_of_range="zero_target", ignore_index=255),
     dict(out_of_range_fraction=0.2, ignore_index=255)),
    ("empty-classes-batch", dict(batch=True), dict(empty_classes=(0, 2))),
    ("saturated-logits", {}, dict(logit_scale=50.0)),
    ("saturated-sigmoid-log", dict(activation="sigmoid", log_loss=True), dict(logit_scale=50.0)),
    ("onehot-target", {}, dict(target_kind="onehot")),
    ("soft-target", {}, dict(target_kind="soft")),
    ("soft-target-bf16", {}, dict(target_kind="soft", target_dtype=torch.bfloat16)),
    ("ignore-index-has-no-effect-on-float-target", dict(ignore_index=0), dict(target_kind="onehot")),
    ("keepdim-labels", {}, dict(target_kind="labels_keepdim")),
    ("preset-monai", DiceSpec.preset("monai").__dict__, {}),
    ("preset-nnunet", DiceSpec.preset("nnunet").__dict__, {}),
    ("preset-smp", DiceSpec.preset("smp").__dict__, dict(empty_classes=(2,))),
    ("preset-kornia", DiceSpec.preset("kornia").__dict__, {}),
    ("preset-seed", DiceSpec.preset("seed").__dict__, dict(out_of_range_fraction=0.1)),
    # The Dice family (docs/conventions.md "Dice family").
    ("tversky", dict(fp_weight=0.3, fn_weight=0.7), {}),
    ("tversky-fp-heavy-batch", dict(fp_weight=0.8, fn_weight=0.2, batch=True), {}),
    ("tversky-zero-weights", dict(fp_weight=0.0, fn_weight=0.0, smooth_nr=0.0, smooth_dr=0.0), {}),
    ("tversky-squared-ignore", dict(fp_weight=0.4, fn_weight=0.9, squared=True, ignore_index=255),
     dict(ignore_index=255)),
    ("tversky-soft-target", dict(fp_weight=0.3, fn_weight=0.7), dict(target_kind="soft")),
    ("focal-tversky", dict(fp_weight=0.3, fn_weight=0.7, focal_gamma=0.75), {}),
    ("focal-2-no-background", dict(focal_gamma=2.0, include_background=False), {}),
    ("focal-absent-zero", dict(focal_gamma=1.5, absent_classes="zero"), dict(empty_classes=(1,))),
    ("jaccard", dict(jaccard=True), {}),
    ("jaccard-batch-squared", dict(jaccard=True, batch=True, squared=True), {}),
    ("jaccard-micro-weight", dict(jaccard=True, average="micro", weight=(1.0, 2.0, 0.5, 1.0)), {}),
    ("generalized-square", dict(generalized="square"), {}),
    ("generalized-simple-batch", dict(generalized="simple", batch=True), {}),
    ("generalized-uniform-none", dict(generalized="uniform", reduction="none"), {}),
    ("generalized-absent", dict(generalized="square"), dict(empty_classes=(1, 3))),
    ("generalized-no-present-class", dict(generalized="square", include_background=False, reduction="none"),
     dict(empty_classes=(1, 2, 3))),
    ("generalized-ignore", dict(generalized="simple", ignore_index=255, include_background=False),
     dict(ignore_index=255)),
    ("generalized-tversky-focal", dict(generalized="square", fp_weight=0.3, fn_weight=0.7, focal_gamma=2.0), {}),
    ("soft-label-soft-target", dict(soft_label=True), dict(target_kind="soft")),
    ("soft-label-soft-batch-sigmoid", dict(soft_label=True, batch=True, activation="sigmoid"),
     dict(target_kind="soft")),
    ("soft-label-labels", dict(soft_label=True, ignore_index=255), dict(ignore_index=255)),
    ("soft-label-squared", dict(soft_label=True, squared=True), dict(target_kind="soft")),
    ("soft-label-generalized-jaccard", dict(soft_label=True, generalized="simple", jaccard=True),
     dict(target_kind="soft")),
    ("soft-label-tversky-bf16-target", dict(soft_label=True, fp_weight=0.6, fn_weight=0.4),
     dict(target_kind="soft", target_dtype=torch.bfloat16)),
]
SPEC_IDS = [case[0] for case in SPEC_CASES]


def spec_case_inputs(fields, input_kwargs, dtype=torch.float32, seed=0):
    logits, target = random_inputs((2, 6, 5), C, dtype, seed=seed, **input_kwargs)
    return logits, target, DiceSpec(**fields)


@pytest.mark.parametrize("case", SPEC_CASES, ids=SPEC_IDS)
def test_reference_follows_the_formula(case):
    _, fields, input_kwargs = case
    logits, target, spec = spec_case_inputs(fields, input_kwargs, torch.float64)
    expected = torch.tensor(formula_loss(logits, target, spec), dtype=torch.float64)
    actual = dice_loss(logits, target, spec, impl="reference")
    assert actual.dtype == torch.float64
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


def test_reference_on_a_hand_computed_case():
    # Two pixels, two classes, probabilities given: class 0 has p = (0.75, 0.5), g = (1, 0);
    # class 1 has p = (0.25, 0.5), g = (0, 1). tp = (0.75, 0.5), P = (1.25, 0.75), G = (1, 1).
    probs = torch.tensor([[[0.75, 0.5], [0.25, 0.5]]], dtype=torch.float64)
    labels = torch.tensor([[0, 1]])
    spec = DiceSpec(activation="none", smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    expected = torch.tensor([[1 - 1.5 / 2.25, 1 - 1.0 / 1.75]], dtype=torch.float64)
    torch.testing.assert_close(dice_loss(probs, labels, spec, impl="reference"), expected, rtol=1e-14, atol=0)


# --- every implementation against the reference ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("case", SPEC_CASES, ids=SPEC_IDS)
@pytest.mark.parametrize("impl", COMPARED)
def test_spec_fields_match_reference(impl, case, dtype):
    _, fields, input_kwargs = case
    logits, target, spec = spec_case_inputs(fields, input_kwargs, dtype)
    assert_matches_reference(impl, logits, target, spec)


SHAPE_CASES = [
    # (label-map shape (N, *spatial), channels, activation)
    ((2, 7, 9), 1, "sigmoid"),
    ((2, 7, 9), 2, "softmax"),
    ((2, 7, 9), 7, "softmax"),
    ((2, 5, 6, 3), 1, "sigmoid"),
    ((2, 5, 6, 3), 2, "softmax"),
    ((3, 5, 6, 3), 7, "softmax"),
    ((1, 11), 3, "sigmoid"),
]


@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("shape,channels,activation", SHAPE_CASES)
@pytest.mark.parametrize("impl", COMPARED)
def test_shapes_and_dtypes_match_reference(impl, shape, channels, activation, dtype, batch):
    logits, target = random_inputs(shape, channels, dtype, seed=len(shape) * 10 + channels)
    assert_matches_reference(impl, logits, target, DiceSpec(activation=activation, batch=batch))


LABEL_DTYPE_CASES = [
    (label_dtype, channels, activation)
    for label_dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool,
                        torch.uint16, torch.uint32, torch.uint64)
    for channels, activation in ((1, "sigmoid"), (2, "softmax"), (5, "softmax"))
    if label_dtype != torch.bool or channels <= 2  # a bool label map holds two classes
]


@pytest.mark.parametrize("label_dtype,channels,activation", LABEL_DTYPE_CASES,
                         ids=[f"{dtype_id(d)}-C{c}" for d, c, _ in LABEL_DTYPE_CASES])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_label_dtypes_give_the_int64_result(impl, label_dtype, channels, activation):
    ignore_index = {torch.bool: None, torch.int8: -1}.get(label_dtype, 255)
    logits, labels = random_inputs((2, 7, 9), channels, seed=3, ignore_index=ignore_index)
    spec = DiceSpec(activation=activation, reduction="none", ignore_index=ignore_index)
    expected = dice_loss(logits.double(), labels, spec, impl="reference")
    x = logits.clone().requires_grad_()
    actual = dice_loss(x, labels.to(label_dtype), spec, impl=impl)
    torch.testing.assert_close(actual.double(), expected, rtol=1e-5, atol=1e-6)
    actual.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("channels,activation", [(1, "sigmoid"), (3, "softmax"), (3, "sigmoid")])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_float_onehot_target_equals_label_map(impl, channels, activation):
    logits, labels = random_inputs((2, 5, 4, 3), channels, seed=5)
    onehot = (labels == 1).unsqueeze(1).float() if channels == 1 else F.one_hot(labels, channels).movedim(-1, 1).float()
    spec = DiceSpec(activation=activation, squared=True, reduction="none")
    if not refuses_float_target(impl, logits, onehot, spec):
        torch.testing.assert_close(dice_loss(logits, onehot, spec, impl=impl), dice_loss(logits, labels, spec, impl=impl))


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_non_contiguous_inputs_equal_contiguous(impl):
    # Channels-last logits and labels read through a transposed view.
    logits, labels = random_inputs((2, 6, 5, 3), 3, seed=16, ignore_index=255)
    strided_logits = logits.contiguous(memory_format=torch.channels_last_3d)
    strided_labels = labels.transpose(1, 2).contiguous().transpose(1, 2)
    assert not strided_logits.is_contiguous() and not strided_labels.is_contiguous()
    spec = DiceSpec(ignore_index=255, reduction="none")
    x = strided_logits.clone().requires_grad_()
    loss = dice_loss(x, strided_labels, spec, impl=impl)
    x_dense = logits.clone().requires_grad_()
    expected = dice_loss(x_dense, labels, spec, impl=impl)
    torch.testing.assert_close(loss, expected)
    loss.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(x.grad, x_dense.grad)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_keepdim_label_map_equals_squeezed(impl):
    logits, labels = random_inputs((2, 3, 7, 9), 3, seed=6)
    spec = DiceSpec(reduction="none")
    torch.testing.assert_close(dice_loss(logits, labels.unsqueeze(1), spec, impl=impl),
                               dice_loss(logits, labels, spec, impl=impl))


RESIZE_TARGETS = {"both-axes": (7, 9), "one-axis-w": (4, 9), "one-axis-h": (7, 5)}  # logits are 4x5


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("target_shape", list(RESIZE_TARGETS.values()), ids=list(RESIZE_TARGETS))
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_resize_logits_equals_resizing_first(impl, target_shape, dtype):
    logits, _ = random_inputs((2, 4, 5), 3, dtype, seed=7)
    _, labels = random_inputs((2, *target_shape), 3, seed=8)
    resized = F.interpolate(logits, size=target_shape, mode="bilinear", align_corners=True)
    spec = DiceSpec(resize_logits=True)
    torch.testing.assert_close(dice_loss(logits, labels, spec, impl=impl), dice_loss(resized, labels, spec, impl=impl),
                               rtol=0, atol=0)


# float32 only: half logits are resized in their own dtype, a rounding the reference (resizing in
# float64) does not share and that is not the implementation's.
@pytest.mark.parametrize("target_shape", list(RESIZE_TARGETS.values()), ids=list(RESIZE_TARGETS))
@pytest.mark.parametrize("impl", COMPARED)
def test_resize_logits_matches_reference(impl, target_shape):
    logits, _ = random_inputs((2, 4, 5), 3, seed=7)
    _, labels = random_inputs((2, *target_shape), 3, seed=8)
    assert_matches_reference(impl, logits, labels, DiceSpec(resize_logits=True, batch=True))


def test_resize_logits_3d_is_trilinear():
    logits, _ = random_inputs((1, 3, 4, 2), 2, seed=9)
    _, labels = random_inputs((1, 5, 4, 3), 2, seed=10)
    resized = F.interpolate(logits, size=(5, 4, 3), mode="trilinear", align_corners=True)
    torch.testing.assert_close(dice_loss(logits, labels, resize_logits=True), dice_loss(resized, labels))


# --- the public entry points agree ----------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in SPEC_CASES if c[0] in ("default", "batch", "micro", "ignore-inside",
                                                                      "absent-exclude", "reduction-none")],
                         ids=lambda c: c[0])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_statistics_then_scoring_equals_dice_loss(impl, case):
    _, fields, input_kwargs = case
    logits, target, spec = spec_case_inputs(fields, input_kwargs, torch.bfloat16)
    stats = dice_statistics(logits, target, spec, impl=impl)
    for s in stats:
        assert s.shape == (2, C) and s.dtype in (torch.float32, torch.float64)
    # fused's dice_loss scores the sums in float64 inside its C++ operator: equal up to float32 rounding.
    rtol = 2 * torch.finfo(torch.float32).eps if impl == "fused" else 0
    torch.testing.assert_close(loss_from_statistics(stats, spec), dice_loss(logits, target, spec, impl=impl),
                               rtol=rtol, atol=0)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_module_equals_function(impl):
    logits, labels = random_inputs((2, 6, 5), 3, seed=11, ignore_index=255)
    fields = dict(batch=True, ignore_index=255, include_background=False)
    module = DiceLoss(impl=impl, **fields)
    assert module.spec == DiceSpec(**fields) and repr(impl) in repr(module)
    x = logits.clone().requires_grad_()
    loss = module(x, labels)
    torch.testing.assert_close(loss, dice_loss(logits, labels, impl=impl, **fields), rtol=0, atol=0)
    loss.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    preset_module = DiceLoss(impl=impl, spec=DiceSpec.preset("nnunet"), batch=False)
    assert preset_module.spec == DiceSpec.preset("nnunet", batch=False)


# --- gradcheck in float64 -------------------------------------------------------------------------

GRADCHECK_CASES = [
    # (id, spec fields, channels, random_inputs keywords, target spatial size when it differs)
    ("softmax", dict(), 3, {}, None),
    ("sigmoid-binary", dict(activation="sigmoid"), 1, {}, None),
    ("squared-ignore-batch", dict(squared=True, ignore_index=255, batch=True), 3, dict(ignore_index=255), None),
    ("log-micro-weight", dict(log_loss=True, average="micro", weight=(1.0, 2.0, 0.5)), 3, {}, None),
    ("beta-no-background-none", dict(beta=2.0, include_background=False, reduction="none"), 3, {}, None),
    ("soft-target-sigmoid", dict(activation="sigmoid"), 3, dict(target_kind="soft"), None),
    ("resize", dict(resize_logits=True), 3, {}, (5, 4)),
    ("focal-tversky-batch", dict(fp_weight=0.3, fn_weight=0.7, focal_gamma=0.75, batch=True), 3, {}, None),
    ("jaccard-squared-none", dict(jaccard=True, squared=True, reduction="none"), 3, {}, None),
    ("generalized-square-absent", dict(generalized="square", include_background=False), 3,
     dict(empty_classes=(1,)), None),
    ("soft-label-soft-target", dict(soft_label=True, generalized="simple"), 3, dict(target_kind="soft"), None),
]


@pytest.mark.parametrize("case", GRADCHECK_CASES, ids=[c[0] for c in GRADCHECK_CASES])
@pytest.mark.parametrize("impl", GRADCHECKED)
def test_gradcheck_float64(impl, case):
    _, fields, channels, input_kwargs, target_spatial = case
    logits, target = random_inputs((2, 3, 4), channels, torch.float64, seed=12, **input_kwargs)
    if target_spatial:
        _, target = random_inputs((2, *target_spatial), channels, seed=13)
    spec = DiceSpec(**fields)
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda v: dice_loss(v, target, spec, impl=impl), (x,), eps=1e-6, atol=1e-7)


# --- edge cases: all ignored, empty foreground, zero denominator ----------------------------------

EDGE_SPECS = {
    "default": DiceSpec(ignore_index=255),
    "sigmoid": DiceSpec(activation="sigmoid", ignore_index=255),
    "no-smoothing": DiceSpec(smooth_nr=0.0, smooth_dr=0.0, ignore_index=255),
    "log-no-smoothing-batch": DiceSpec(smooth_nr=0.0, smooth_dr=0.0, log_loss=True, batch=True, ignore_index=255),
    **{name: DiceSpec.preset(name, ignore_index=255) for name in dice_impls.PRESETS},
}


@pytest.mark.parametrize("spec_id", list(EDGE_SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_all_ignored_batch_is_finite_with_zero_gradient(impl, dtype, spec_id):
    # float16 catches a mask applied as a product: the statistics' gradient 1 / smooth_dr overflows
    # float16 and inf * 0 is NaN.
    spec = EDGE_SPECS[spec_id]
    logits, labels = random_inputs((2, 5, 4), 3, dtype, seed=14, ignore_index=255, ignore_fraction=1.0)
    assert (labels == 255).all()
    x = logits.clone().requires_grad_()
    loss = dice_loss(x, labels, spec, impl=impl)
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss.double(), torch.tensor(formula_loss(logits, labels, spec), dtype=torch.float64))
    if spec_id == "default":
        assert loss.item() == 0.0, "README: an all-ignored batch has loss 0 under the default smoothing"
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x.grad)), "ignored pixels must get exactly zero gradient"


@pytest.mark.parametrize("spec_id", list(EDGE_SPECS))
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
@pytest.mark.parametrize("impl", COMPARED)
def test_empty_foreground_is_finite_and_matches_reference(impl, dtype, spec_id):
    spec = EDGE_SPECS[spec_id]
    channels = 1 if spec.activation == "sigmoid" else 3
    logits, labels = random_inputs((2, 5, 4), channels, dtype, seed=15, empty_classes=range(1, channels + 1))
    assert (labels == 0).all()
    assert_matches_reference(impl, logits, labels, spec)


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_zero_denominator_scores_one_with_zero_gradient(impl):
    # Nothing predicted, nothing present, no smoothing: documented as a perfect score.
    probs = torch.zeros(2, 1, 4, 3, requires_grad=True)
    labels = torch.zeros(2, 4, 3, dtype=torch.int64)
    loss = dice_loss(probs, labels, impl=impl, activation="none", smooth_nr=0.0, smooth_dr=0.0)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(probs.grad, torch.zeros_like(probs.grad))


# --- hypothesis: random specs and shapes ----------------------------------------------------------

@st.composite
def random_cases(draw):
    channels = draw(st.integers(1, 5))
    spatial = draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    shape = (draw(st.integers(1, 3)), *spatial)
    activation = "sigmoid" if channels == 1 else draw(st.sampled_from(["softmax", "sigmoid", "none"]))
    target_kind = draw(st.sampled_from(["labels", "labels", "labels_keepdim", "onehot", "soft"]))
    labels = target_kind.startswith("labels")
    ignore_index = draw(st.sampled_from([None, 255, -1, 0, channels - 1])) if labels else None
    include_background = channels == 1 or draw(st.booleans())
    average = draw(st.sampled_from(["macro", "micro"]))
    form = draw(st.sampled_from(["plain", "log_loss", "negate"]))
    weight = None
    if draw(st.booleans()):
        weight = tuple(draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 3.0]), min_size=channels, max_size=channels)))
        if sum(weight[0 if include_background else 1:]) == 0:
            weight = None
    absent_classes = "include" if average == "micro" else draw(st.sampled_from(["include", "zero", "exclude"]))
    score = draw(st.sampled_from(["fbeta", "tversky", "jaccard"]))
    # Weights >= 0.3: with a zero weight (a fixed case covers it) random one-pixel cases score ~1,
    # where 1 - score (and log(score)) cancel in float32 whatever the implementation.
    tversky = tuple(draw(st.sampled_from([0.3, 0.5, 1.0])) for _ in range(2)) if score == "tversky" else (None, None)
    generalized = None
    if average == "macro" and weight is None and absent_classes == "include":
        generalized = draw(st.sampled_from([None, "square", "simple", "uniform"]))
    spec = DiceSpec(
        activation=activation,
        smooth_nr=draw(st.sampled_from([0.0, 1e-5, 1.0])),
        smooth_dr=draw(st.sampled_from([0.0, 1e-5, 1.0])),
        beta=draw(st.sampled_from([0.5, 1.0, 2.0])) if score == "fbeta" else 1.0,
        squared=draw(st.booleans()),
        batch=draw(st.booleans()),
        include_background=include_background,
        ignore_index=ignore_index,
        weight=weight,
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        log_loss=form == "log_loss",
        negate=form == "negate",
        average=average,
        min_denominator=draw(st.sampled_from([0.0, 1e-8])),
        absent_classes=absent_classes,
        fp_weight=tversky[0],
        fn_weight=tversky[1],
        # gamma < 1 is ill-conditioned next to a perfect score (the loss's relative rounding error
        # grows like eps / (1 - score)), which tiny random cases hit: the fixed cases cover 0.75.
        focal_gamma=draw(st.sampled_from([1.0, 2.0, 3.0])) if form == "plain" else 1.0,
        jaccard=score == "jaccard",
        generalized=generalized,
        soft_label=draw(st.booleans()),
    )
    inputs = dict(
        target_kind=target_kind, ignore_index=ignore_index, probabilities=activation == "none",
        empty_classes=tuple(draw(st.sets(st.integers(0, channels - 1), max_size=channels - 1))),
        seed=draw(st.integers(0, 2**16)),
    )
    return shape, channels, spec, inputs


def well_conditioned_in_float32(logits, target, spec) -> bool:
    """Whether float32 can hold the case's gradient to the tolerance at all (the float64
    implementations match the reference either way). Tiny random cases hit two corners: (1) the
    gradient with respect to the probabilities is a sum of terms dL/dI and dL/dP (of the
    statistics) that cancel to a small rest, which float32 rounds to eps times the terms: next to a
    perfect squared-Dice score on one counted pixel (a rest of ~(1 - p) from terms of ~1), or a
    score constant up to the smoothing (smooth_nr=1, smooth_dr=1e-5, Tversky (0.3, 0.5) on one
    pixel: (p + 1) / ((p + 1) / 2 + 1e-5)); (2) focal gamma > 1 rounds 1 - s itself, a relative
    error of (gamma - 1) eps / (1 - s)."""
    stats = [s.detach().requires_grad_() for s in dice_statistics(logits.double(), target, spec, impl="reference")]
    loss = loss_from_statistics(dice_impls.DiceStatistics(*stats), spec).sum()
    d_intersection, d_pred_sum, _ = torch.autograd.grad(loss, stats, allow_unused=True, materialize_grads=True)
    terms = float((d_intersection.abs() + 2 * d_pred_sum.abs()).max())
    p = activate(logits.double(), spec).requires_grad_()
    (grad,) = torch.autograd.grad(dice_loss(p, target, spec.replace(activation="none"), impl="reference").sum(), p)
    if float(grad.abs().max()) < 0.06 * terms:  # eps * terms / grad within a tenth of the 1e-5 tolerance
        return False
    if spec.focal_gamma > 1:
        plain = spec.replace(focal_gamma=1.0, log_loss=False, negate=False, reduction="none")
        margins = dice_loss(logits.double(), target, plain, impl="reference")
        return not bool(((margins > 0) & (margins < 0.02)).any())
    return True


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(random_cases())
def test_random_specs_and_shapes_match_reference(case):
    shape, channels, spec, inputs = case
    logits, target = random_inputs(shape, channels, **inputs)
    assume(well_conditioned_in_float32(logits, target, spec))
    expected = torch.tensor(formula_loss(logits, target, spec), dtype=torch.float64)
    torch.testing.assert_close(dice_loss(logits.double(), target, spec, impl="reference"), expected,
                               rtol=1e-12, atol=1e-12)
    for impl in COMPARED:
        assert_matches_reference(impl, logits, target, spec)


# --- regressions: label dtypes, out-of-dtype ignore_index, empty batches --------------------------

# (label dtype, an ignore_index it cannot hold): comparing in the label's dtype would wrap the
# index around (256 -> 0, -100 -> 156 for uint8) and ignore real labels.
UNHOLDABLE_IGNORE = [(torch.uint8, 256), (torch.uint8, -100), (torch.int8, 200), (torch.int16, 2**20),
                     (torch.uint16, -1), (torch.uint32, -100), (torch.uint64, -1), (torch.int32, 2**40)]


@pytest.mark.parametrize("label_dtype,ignore_index", UNHOLDABLE_IGNORE,
                         ids=[f"{dtype_id(d)}-{i}" for d, i in UNHOLDABLE_IGNORE])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_ignore_index_the_label_dtype_cannot_hold_ignores_nothing(impl, label_dtype, ignore_index):
    # The case: uint8 labels, ignore_index=256, vectorized dropped every class-0 pixel
    # (0.7629 instead of the reference's 0.6666).
    logits, labels = random_inputs((2, 7, 9), 3, seed=50)
    spec = DiceSpec(ignore_index=ignore_index, reduction="none")
    expected = dice_loss(logits, labels, spec.replace(ignore_index=None), impl=impl)
    torch.testing.assert_close(dice_loss(logits, labels.to(label_dtype), spec, impl=impl), expected, rtol=0, atol=0)
    if impl == "vectorized":
        assert (labels == 0).any(), "the case must hold the class that a wrapped 256 would hide"


@pytest.mark.parametrize("label_dtype,ignore_index", UNHOLDABLE_IGNORE,
                         ids=[f"{dtype_id(d)}-{i}" for d, i in UNHOLDABLE_IGNORE])
def test_metrics_ignore_index_the_label_dtype_cannot_hold_ignores_nothing(label_dtype, ignore_index):
    _, labels = random_inputs((2, 7, 9), 3, seed=51)
    _, pred = random_inputs((2, 7, 9), 3, seed=52)
    expected = dice_impls.metrics.confusion_counts(pred, labels, 3)
    actual = dice_impls.metrics.confusion_counts(pred.to(label_dtype), labels.to(label_dtype), 3,
                                                 ignore_index=ignore_index)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


def test_metrics_class_count_beyond_the_label_dtype():
    # 300 classes with uint8 labels: ``labels >= 300`` in uint8 would compare against 44.
    _, labels = random_inputs((2, 7, 9), 60, seed=53)
    labels = labels.to(torch.uint8) + 40
    for a, e in zip(dice_impls.metrics.confusion_counts(labels, labels, 300),
                    dice_impls.metrics.confusion_counts(labels.long(), labels.long(), 300)):
        assert torch.equal(a, e)


@pytest.mark.parametrize("spec", [DiceSpec(batch=True), DiceSpec(batch=False, reduction="sum"), DiceSpec(batch=False),
                                  DiceSpec(batch=False, absent_classes="exclude"),
                                  DiceSpec(batch=True, generalized="square", fp_weight=0.3, fn_weight=0.7)],
                         ids=["batch", "image-sum", "image-mean", "image-mean-exclude", "batch-family"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_empty_batch_loss_stays_attached_to_the_graph(impl, spec):
    # naive used to return fresh zeros, so global_dice_loss(...).backward() on a rank without
    # images raised "element 0 of tensors does not require grad".
    from dice_impls.distributed import global_dice_loss

    logits = torch.randn(0, 3, 5, 4, requires_grad=True)
    labels = torch.randint(0, 3, (0, 5, 4))
    for loss in (dice_loss(logits, labels, spec, impl=impl), global_dice_loss(logits, labels, spec, impl=impl)):
        assert loss.requires_grad and torch.isfinite(loss).all()
        assert loss.item() == 0.0  # nothing to score: the per-image mean of no image is 0, not NaN
        (grad,) = torch.autograd.grad(loss, logits)
        assert grad.shape == logits.shape
