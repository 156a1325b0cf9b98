"""Bad input gets a ValueError/TypeError whose message names the problem, through every entry point.

Entry points: ``dice_loss`` and ``dice_statistics`` with every registered implementation, and the
modules ``DiceLoss``, ``DiceCELoss`` and ``DiceFocalLoss`` with every implementation.
"""

from __future__ import annotations

import pytest
import torch

import dice_impls
from dice_impls import DiceCELoss, DiceFocalLoss, DiceLoss, DiceSpec, dice_loss, dice_statistics, get_implementation
from helpers import random_inputs

IMPLS = list(dice_impls.IMPLEMENTATIONS)
MODULES = {"DiceLoss": DiceLoss, "DiceCELoss": DiceCELoss, "DiceFocalLoss": DiceFocalLoss}


def entry_points():
    """``(id, call(logits, target, spec))`` for every public way of computing the loss."""
    for impl in IMPLS:
        yield f"dice_loss-{impl}", lambda x, t, s, impl=impl: dice_loss(x, t, s, impl=impl)
        yield f"dice_statistics-{impl}", lambda x, t, s, impl=impl: dice_statistics(x, t, s, impl=impl)
        for name, module in MODULES.items():
            yield f"{name}-{impl}", lambda x, t, s, module=module, impl=impl: module(impl=impl, spec=s)(x, t)


ENTRY_POINTS = dict(entry_points())


def labels_with(value, channels=3, shape=(2, 4, 5), dtype=torch.int64):
    logits, labels = random_inputs(shape, channels, seed=1, label_dtype=dtype)
    labels[0, 1, 2] = value
    return logits, labels


def uint64_labels_with_the_largest_value():
    """uint64 labels holding 2**64 - 1 (torch cannot assign it directly): read as 2**63 - 1, never -1."""
    logits, labels = labels_with(0, dtype=torch.uint64)
    labels.view(torch.int64)[0, 1, 2] = -1
    return logits, labels


def with_value(value):
    logits, labels = random_inputs((2, 4, 5), 3, seed=2)
    logits[1, 2, 3, 4] = value
    return logits, labels


def float_target(shape, values=None):
    logits, _ = random_inputs((2, 4, 5), 3, seed=3)
    target = torch.rand(shape)
    if values is not None:
        target.view(-1)[: len(values)] = torch.tensor(values)
    return logits, target


SPEC = DiceSpec()
# (id, make() -> (logits, target, spec), error type, fragments the message must contain)
BAD_INPUTS = [
    ("logits-without-spatial-dims", lambda: (torch.randn(2, 3), torch.zeros(2, dtype=torch.int64), SPEC),
     ValueError, ["logits must have shape (N, C, *spatial)", "(2, 3)"]),
    ("label-map-rank", lambda: (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, dtype=torch.int64), SPEC),
     ValueError, ["label map must have shape", "(2, 4)"]),
    ("label-map-extra-dim", lambda: (torch.randn(2, 3, 4, 5), torch.zeros(2, 2, 4, 5, dtype=torch.int64), SPEC),
     ValueError, ["label map must have shape", "(2, 2, 4, 5)"]),
    ("float-target-rank", lambda: (*float_target((2, 4, 5)), SPEC),
     ValueError, ["float target must have shape (N, C, *spatial)", "(2, 4, 5)"]),
    ("float-target-channels", lambda: (*float_target((2, 2, 4, 5)), SPEC),
     ValueError, ["float target has 2 channels but logits have 3"]),
    ("float-target-above-one", lambda: (*float_target((2, 3, 4, 5), [1.5]), SPEC),
     ValueError, ["[0, 1]", "1.5"]),
    ("float-target-negative", lambda: (*float_target((2, 3, 4, 5), [-0.25]), SPEC),
     ValueError, ["[0, 1]", "-0.25"]),
    ("float-target-nan", lambda: (*float_target((2, 3, 4, 5), [float("nan")]), SPEC),
     ValueError, ["float target contains NaN"]),
    ("weight-count", lambda: (*random_inputs((2, 4, 5), 3), DiceSpec(weight=(1.0, 2.0))),
     ValueError, ["weight has 2 entries but logits have 3 channels"]),
    ("label-equal-to-C", lambda: (*labels_with(3), SPEC),
     ValueError, ["labels out of range", "[3]", "[0, 2]"]),
    ("label-negative", lambda: (*labels_with(-1), SPEC),
     ValueError, ["labels out of range", "[-1]"]),
    ("label-large-uint8", lambda: (*labels_with(200, dtype=torch.uint8), SPEC),
     ValueError, ["labels out of range", "[200]"]),
    ("label-not-the-ignore-index", lambda: (*labels_with(7), DiceSpec(ignore_index=255)),
     ValueError, ["labels out of range", "[7]", "other than ignore_index=255"]),
    ("binary-label-2", lambda: (*labels_with(2, channels=1), DiceSpec(activation="sigmoid")),
     ValueError, ["labels out of range", "[2]", "[0, 1]"]),
    ("nan-logit", lambda: (*with_value(float("nan")), SPEC), ValueError, ["NaN or inf", "(1, 2, 3, 4)"]),
    ("inf-logit", lambda: (*with_value(float("inf")), SPEC), ValueError, ["NaN or inf", "(1, 2, 3, 4)"]),
    ("minus-inf-logit", lambda: (*with_value(-float("inf")), SPEC), ValueError, ["NaN or inf"]),
    ("integer-logits", lambda: (torch.randint(0, 3, (2, 3, 4, 5)), torch.zeros(2, 4, 5, dtype=torch.int64), SPEC),
     TypeError, ["logits must be a floating tensor", "torch.int64"]),
    ("bool-logits", lambda: (torch.ones(2, 3, 4, 5, dtype=torch.bool), torch.zeros(2, 4, 5, dtype=torch.int64), SPEC),
     TypeError, ["logits must be a floating tensor", "torch.bool"]),
    ("logits-not-a-tensor", lambda: ([[[0.5]]], torch.zeros(1, 1, dtype=torch.int64), SPEC),
     TypeError, ["must be torch.Tensors", "list"]),
    ("spatial-size", lambda: (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 6, dtype=torch.int64), SPEC),
     ValueError, ["spatial size differs", "(4, 5)", "(4, 6)", "resize_logits=True"]),
    ("spatial-size-float-target", lambda: (torch.randn(2, 3, 4, 5), torch.rand(2, 3, 5, 5), SPEC),
     ValueError, ["spatial size differs"]),
    ("resize-4-spatial-dims", lambda: (torch.randn(1, 2, 2, 2, 2, 2), torch.zeros(1, 2, 2, 2, 3, dtype=torch.int64),
                                       DiceSpec(resize_logits=True)),
     ValueError, ["resize_logits supports 1 to 3 spatial dims, got 4"]),
    ("target-on-another-device", lambda: (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 5, dtype=torch.int64, device="meta"),
                                          SPEC),
     ValueError, ["logits are on cpu but target is on meta"]),
    ("batch-size", lambda: (torch.randn(2, 3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.int64), SPEC),
     ValueError, ["batch size differs", "2", "3"]),
    ("softmax-one-channel", lambda: (*random_inputs((2, 4, 5), 1), SPEC),
     ValueError, ["softmax over a single channel", "sigmoid"]),
    ("drop-the-only-channel", lambda: (*random_inputs((2, 4, 5), 1), DiceSpec(activation="sigmoid", include_background=False)),
     ValueError, ["include_background=False drops the only channel"]),
    ("weight-zero-after-background", lambda: (*random_inputs((2, 4, 5), 3), DiceSpec(weight=(1.0, 0.0, 0.0), include_background=False)),
     ValueError, ["weight is zero on every class"]),
    # Audit: -100 wrapped to 156 in uint8, so a label 156 passed as "ignored".
    ("uint8-label-156-with-ignore-minus-100", lambda: (*labels_with(156, dtype=torch.uint8), DiceSpec(ignore_index=-100)),
     ValueError, ["labels out of range", "[156]", "other than ignore_index=-100"]),
    ("uint8-label-0-is-no-ignore-index-256", lambda: (*labels_with(200, dtype=torch.uint8), DiceSpec(ignore_index=256)),
     ValueError, ["labels out of range", "[200]"]),
    ("label-uint16", lambda: (*labels_with(9, dtype=torch.uint16), SPEC), ValueError, ["labels out of range", "[9]"]),
    ("label-uint32", lambda: (*labels_with(2**31 + 5, dtype=torch.uint32), DiceSpec(ignore_index=255)),
     ValueError, ["labels out of range", f"[{2**31 + 5}]"]),
    ("label-uint64-above-int64", lambda: (*uint64_labels_with_the_largest_value(), DiceSpec(ignore_index=-1)),
     ValueError, ["labels out of range", f"[{2**63 - 1}]"]),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_input_raises_a_clear_error(entry, case):
    _, make, error, fragments = case
    logits, target, spec = make()
    with pytest.raises(error) as raised:
        ENTRY_POINTS[entry](logits, target, spec)
    for fragment in fragments:
        assert fragment in str(raised.value), f"{fragment!r} missing from {raised.value!r}"


# (id, make() -> (logits, target, spec)): edge values that are valid and must be accepted.
ACCEPTED = [
    ("ignore-index-255-uint8", lambda: (*labels_with(255, dtype=torch.uint8), DiceSpec(ignore_index=255))),
    ("ignore-index-negative", lambda: (*labels_with(-1), DiceSpec(ignore_index=-1))),
    ("ignore-index-inside-range", lambda: (*labels_with(1), DiceSpec(ignore_index=1))),
    ("resize-logits", lambda: (torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 4, 6)), DiceSpec(resize_logits=True))),
    ("resize-logits-3d", lambda: (torch.randn(1, 2, 3, 3, 2), torch.randint(0, 2, (1, 4, 3, 5)), DiceSpec(resize_logits=True))),
    ("out-of-range-zero-target", lambda: (*labels_with(3), DiceSpec(out_of_range="zero_target"))),
    ("binary-bool-labels", lambda: (torch.randn(2, 1, 4, 5), torch.rand(2, 4, 5) > 0.5, DiceSpec(activation="sigmoid"))),
    ("keepdim-label-map", lambda: (torch.randn(2, 3, 4, 5), torch.randint(0, 3, (2, 1, 4, 5)), SPEC)),
    ("large-finite-logits", lambda: (*with_value(3e4), SPEC)),
    ("largest-fp16-logits", lambda: (with_value(65504.0)[0].half(), with_value(0)[1], SPEC)),
    ("kornia-preset-with-uint8-labels", lambda: (*labels_with(2, dtype=torch.uint8), DiceSpec.preset("kornia"))),
    ("int8-labels-ignore-index-200", lambda: (*labels_with(1, dtype=torch.int8), DiceSpec(ignore_index=200))),
    *[(f"{str(dtype).removeprefix('torch.')}-labels-ignore-255", lambda dtype=dtype: (*labels_with(255, dtype=dtype),
                                                                                     DiceSpec(ignore_index=255)))
      for dtype in (torch.uint16, torch.uint32, torch.uint64)],
    ("family-fields", lambda: (*random_inputs((2, 4, 5), 3, seed=4, ignore_index=255),
                               DiceSpec(ignore_index=255, generalized="square", fp_weight=0.3, fn_weight=0.7,
                                        focal_gamma=0.75, soft_label=True))),
]


@pytest.mark.parametrize("case", ACCEPTED, ids=[c[0] for c in ACCEPTED])
@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_valid_edge_input_is_accepted(entry, case):
    _, make = case
    logits, target, spec = make()
    result = ENTRY_POINTS[entry](logits, target, spec)
    for value in result if isinstance(result, tuple) else (result,):
        assert torch.isfinite(value).all()


# --- errors raised before any input is seen --------------------------------------------------------

def constructors():
    """``(id, build(impl, **fields))``: every way to name an implementation and spec fields."""
    x, t = random_inputs((1, 3, 4), 2)
    yield "dice_loss", lambda impl="vectorized", **f: dice_loss(x, t, impl=impl, **f)
    yield "dice_statistics", lambda impl="vectorized", **f: dice_statistics(x, t, impl=impl, **f)
    for name, module in MODULES.items():
        yield name, lambda impl="vectorized", module=module, **f: module(impl=impl, **f)


CONSTRUCTORS = dict(constructors())


@pytest.mark.parametrize("build", list(CONSTRUCTORS))
def test_unknown_implementation(build):
    with pytest.raises(ValueError, match=r"unknown implementation 'cuda_magic'.*choose one of.*'vectorized'"):
        CONSTRUCTORS[build](impl="cuda_magic")


def test_get_implementation_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown implementation 'Vectorized'; choose one of \[.*'reference'"):
        get_implementation("Vectorized")


@pytest.mark.parametrize("field,value", [("smooth_nr", -1e-5), ("smooth_dr", -1.0), ("smooth_nr", float("nan")),
                                         ("smooth_dr", float("inf"))])
@pytest.mark.parametrize("build", list(CONSTRUCTORS))
def test_negative_or_non_finite_smoothing(build, field, value):
    with pytest.raises(ValueError, match=rf"DiceSpec\.{field} must be finite and >= 0, got {value}"):
        CONSTRUCTORS[build](**{field: value})


@pytest.mark.parametrize("build", list(CONSTRUCTORS))
def test_unknown_spec_field(build):
    with pytest.raises(TypeError, match=r"unknown DiceSpec field\(s\) \['smoothing'\]"):
        CONSTRUCTORS[build](smoothing=1.0)


def test_spec_of_the_wrong_type():
    x, t = random_inputs((1, 3, 4), 2)
    with pytest.raises(TypeError, match="spec must be a DiceSpec, got dict"):
        dice_loss(x, t, {"batch": True})
    with pytest.raises(TypeError, match="spec must be a DiceSpec, got str"):
        DiceLoss(spec="monai")


@pytest.mark.parametrize("module", [DiceCELoss, DiceFocalLoss])
def test_compound_needs_logits(module):
    with pytest.raises(ValueError, match="need logits"):
        module(activation="none")


@pytest.mark.parametrize("module", [DiceCELoss, DiceFocalLoss])
def test_compound_term_weights_must_be_non_negative(module):
    weight_name = "lambda_ce" if module is DiceCELoss else "lambda_focal"
    with pytest.raises(ValueError, match="term weights must be >= 0"):
        module(**{weight_name: -1.0})


# --- validate=False: the data-reading checks are skipped, the others still run ------------------------

def validate_entry_points():
    """``(id, call(logits, target, spec, validate))`` for every entry point with the switch."""
    from dice_impls.distributed import global_dice_loss

    for impl in IMPLS:
        yield f"dice_loss-{impl}", lambda x, t, s, v, impl=impl: dice_loss(x, t, s, impl=impl, validate=v)
        yield f"dice_statistics-{impl}", lambda x, t, s, v, impl=impl: dice_statistics(x, t, s, impl=impl, validate=v)
        yield f"DiceLoss-{impl}", lambda x, t, s, v, impl=impl: DiceLoss(impl, s, validate=v)(x, t)
        yield f"Implementation-{impl}", lambda x, t, s, v, impl=impl: get_implementation(impl)(x, t, s, validate=v)
        yield f"global_dice_loss-{impl}", lambda x, t, s, v, impl=impl: global_dice_loss(x, t, s, impl=impl, validate=v)


VALIDATE_ENTRY_POINTS = dict(validate_entry_points())
# (id, make() -> (logits, target, spec), message with validation on); each reads the data.
VALUE_PROBLEMS = [
    ("label-out-of-range", lambda: (*labels_with(7), SPEC), "labels out of range"),
    ("negative-label", lambda: (*labels_with(-3), DiceSpec(ignore_index=255)), "labels out of range"),
    ("float-target-above-one", lambda: (*float_target((2, 3, 4, 5), [1.5]), SPEC), "[0, 1]"),
]


@pytest.mark.parametrize("case", VALUE_PROBLEMS, ids=[c[0] for c in VALUE_PROBLEMS])
@pytest.mark.parametrize("entry", list(VALIDATE_ENTRY_POINTS))
def test_validate_false_skips_the_checks_that_read_the_data(entry, case):
    _, make, message = case
    logits, target, spec = make()
    if target.is_floating_point() and get_implementation(entry.rsplit("-", 1)[1]).label_maps_only:
        with pytest.raises(TypeError, match="label maps only"):  # a dtype rule, not a value check
            VALIDATE_ENTRY_POINTS[entry](logits, target, spec, False)
        return
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        VALIDATE_ENTRY_POINTS[entry](logits, target, spec, True)
    VALIDATE_ENTRY_POINTS[entry](logits, target, spec, False)  # no error: the caller vouched for the data


@pytest.mark.parametrize("entry", list(VALIDATE_ENTRY_POINTS))
def test_validate_false_skips_the_finite_check_of_the_dense_implementations(entry):
    logits, labels = with_value(float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        VALIDATE_ENTRY_POINTS[entry](logits, labels, SPEC, True)
    if get_implementation(entry.rsplit("-", 1)[1]).checks_finite:
        return  # fused detects NaN/inf inside its kernel, validation or not
    result = VALIDATE_ENTRY_POINTS[entry](logits, labels, SPEC, False)
    assert not all(torch.isfinite(r).all() for r in (result if isinstance(result, tuple) else (result,)))


@pytest.mark.parametrize("entry", list(VALIDATE_ENTRY_POINTS))
def test_validate_false_keeps_the_checks_that_read_no_data(entry):
    for logits, target, message in [
        (torch.randn(2, 3, 4, 5), torch.zeros(2, 4, 6, dtype=torch.int64), "spatial size differs"),
        (torch.randn(2, 3, 4, 5), torch.zeros(3, 4, 5, dtype=torch.int64), "batch size differs"),
        (torch.randint(0, 3, (2, 3, 4, 5)), torch.zeros(2, 4, 5, dtype=torch.int64), "logits must be a floating"),
    ]:
        with pytest.raises((TypeError, ValueError), match=message):
            VALIDATE_ENTRY_POINTS[entry](logits, target, SPEC, False)
    with pytest.raises(ValueError, match="weight has 2 entries"):
        VALIDATE_ENTRY_POINTS[entry](*random_inputs((2, 4, 5), 3), DiceSpec(weight=(1.0, 2.0)), False)


@pytest.fixture
def host_reads(monkeypatch):
    """Counts the reads of a tensor's value by the host (each one a device-to-host sync on GPU)."""
    reads = []
    for name in ("__bool__", "item", "__int__", "__float__", "__index__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return reads


VALID_CASES = {
    "labels": lambda: random_inputs((2, 6, 5), 3, seed=5),
    "labels-ignore-outside": lambda: random_inputs((2, 6, 5), 3, seed=5, ignore_index=255, label_dtype=torch.uint8),
    "labels-ignore-inside": lambda: random_inputs((2, 6, 5), 3, seed=5, ignore_index=1),
    "soft-target": lambda: random_inputs((2, 6, 5), 3, seed=5, target_kind="soft"),
}


@pytest.mark.parametrize("case", list(VALID_CASES))
@pytest.mark.parametrize("impl", IMPLS)
def test_validation_of_valid_inputs_reads_one_flag_back(host_reads, impl, case):
    logits, target = VALID_CASES[case]()
    if target.is_floating_point() and get_implementation(impl).label_maps_only:
        return  # refused by dtype (test_implementations.py)
    spec = DiceSpec(ignore_index=255 if case == "labels-ignore-outside" else 1 if case == "labels-ignore-inside" else None,
                    generalized="square", fp_weight=0.3, fn_weight=0.7)
    x = logits.clone().requires_grad_()
    counts = {}
    for validate in (True, False):
        host_reads.clear()
        dice_loss(x, target, spec, impl=impl, validate=validate).backward()
        counts[validate] = len(host_reads)
    if impl == "fused" and logits.device.type == "cpu":
        # fused's C++ kernel validates in its own pass and raises from there: no read at all.
        assert counts == {True: 0, False: 0}, counts
        return
    assert counts[True] == counts[False] + 1, counts
    if not get_implementation(impl).checks_finite:  # fused reads its kernel's NaN probe back itself
        assert counts[False] == 0, counts
