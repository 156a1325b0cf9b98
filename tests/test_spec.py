"""DiceSpec: presets and how they differ, replace(), and the errors of __post_init__."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from dice_impls import PRESETS, DiceSpec, dice_loss
from dice_impls.spec import field_names
from helpers import random_inputs

# What each peer's default is documented to be (docs/conventions.md);
# fields not listed keep DiceSpec's defaults.
DOCUMENTED = {
    "monai": dict(activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=False, include_background=True),
    "nnunet": dict(smooth_nr=1e-5, smooth_dr=1e-5, batch=True, include_background=False, min_denominator=1e-8,
                   negate=True),
    "smp": dict(smooth_nr=0.0, smooth_dr=0.0, batch=True, fp_weight=0.5, fn_weight=0.5, soft_label=True,
                min_denominator=1e-7, absent_classes="zero"),
    "kornia": dict(smooth_nr=0.0, smooth_dr=1e-8, batch=False, average="micro", include_background=True,
                   ignore_index=-100),
    "seed": dict(smooth_nr=1e-5, smooth_dr=1e-5, batch=True, include_background=True, out_of_range="zero_target",
                 resize_logits=True),
}


def test_the_five_presets_exist():
    assert set(PRESETS) == set(DOCUMENTED)
    for name in PRESETS:
        assert isinstance(DiceSpec.preset(name), DiceSpec)


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_preset_has_the_documented_conventions(name):
    spec = DiceSpec.preset(name)
    for field, value in DOCUMENTED[name].items():
        assert getattr(spec, field) == value, f"{name}.{field}"
    assert spec.activation == "softmax" and spec.beta == 1.0 and not spec.squared and spec.weight is None


def test_presets_are_pairwise_different_and_give_different_losses():
    logits, labels = random_inputs((2, 6, 5), 3, seed=31, empty_classes=(2,))
    specs = {name: DiceSpec.preset(name) for name in PRESETS}
    losses = {name: float(dice_loss(logits, labels, spec, impl="reference")) for name, spec in specs.items()}
    for a, b in itertools.combinations(PRESETS, 2):
        assert specs[a] != specs[b]
        assert losses[a] != pytest.approx(losses[b], rel=1e-6), f"{a} and {b} give the same loss"


def test_nnunet_negated_score_differs_from_one_minus_score_by_one():
    logits, labels = random_inputs((2, 6, 5), 3, seed=32)
    negated = dice_loss(logits, labels, DiceSpec.preset("nnunet"), impl="reference")
    plain = dice_loss(logits, labels, DiceSpec.preset("nnunet", negate=False), impl="reference")
    torch.testing.assert_close(negated, plain - 1)


def test_preset_overrides():
    spec = DiceSpec.preset("nnunet", batch=False, ignore_index=255)
    assert spec.batch is False and spec.ignore_index == 255
    assert spec.replace(batch=True, ignore_index=None) == DiceSpec.preset("nnunet")


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown preset 'MONAI'; choose one of \['kornia', 'monai'"):
        DiceSpec.preset("MONAI")


def test_preset_with_an_unknown_field():
    with pytest.raises(TypeError, match=r"unknown DiceSpec field\(s\) \['bach'\]"):
        DiceSpec.preset("monai", bach=True)


def test_preset_validates_its_overrides():
    with pytest.raises(ValueError, match="smooth_dr must be finite and >= 0"):
        DiceSpec.preset("smp", smooth_dr=-1.0)


# --- replace ---------------------------------------------------------------------------------------

def test_replace_returns_a_changed_copy():
    spec = DiceSpec()
    changed = spec.replace(batch=True, weight=[1, 2, 3])
    assert changed.batch and changed.weight == (1.0, 2.0, 3.0)
    assert spec == DiceSpec() and not spec.batch  # the original is untouched
    assert spec.replace() == spec


def test_replace_rejects_unknown_fields_naming_them_and_the_valid_ones():
    with pytest.raises(TypeError, match=r"unknown DiceSpec field\(s\) \['a', 'b'\]; fields are \['activation'"):
        DiceSpec().replace(b=1, a=2)


def test_replace_validates_the_result():
    with pytest.raises(ValueError, match="reduction must be one of"):
        DiceSpec().replace(reduction="avg")


def test_spec_is_frozen_hashable_and_compares_by_value():
    spec = DiceSpec(weight=[1, 2])
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.batch = True
    assert spec.weight == (1.0, 2.0) and isinstance(spec.weight, tuple)
    assert {spec: 1}[DiceSpec(weight=(1.0, 2.0))] == 1


def test_field_names_lists_every_field():
    assert field_names() == [f.name for f in dataclasses.fields(DiceSpec)]
    assert {"activation", "smooth_nr", "smooth_dr", "beta", "squared", "batch", "include_background",
            "ignore_index", "weight", "reduction", "log_loss"} <= set(field_names())


# --- __post_init__ errors -----------------------------------------------------------------------

POST_INIT_ERRORS = [
    (dict(activation="softmax2d"), ValueError, "activation must be one of"),
    (dict(activation=None), ValueError, "activation must be one of"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(average="weighted"), ValueError, "average must be one of"),
    (dict(absent_classes="skip"), ValueError, "absent_classes must be one of"),
    (dict(out_of_range="clip"), ValueError, "out_of_range must be one of"),
    (dict(smooth_nr=-1e-5), ValueError, "smooth_nr must be finite and >= 0, got -1e-05"),
    (dict(smooth_dr=float("nan")), ValueError, "smooth_dr must be finite and >= 0, got nan"),
    (dict(beta=-1.0), ValueError, "beta must be finite and >= 0"),
    (dict(beta=float("inf")), ValueError, "beta must be finite and >= 0"),
    (dict(min_denominator=-1e-8), ValueError, "min_denominator must be finite and >= 0"),
    (dict(smooth_nr="1e-5"), TypeError, "smooth_nr must be a number, got str"),
    (dict(smooth_dr=True), TypeError, "smooth_dr must be a number, got bool"),
    (dict(ignore_index=True), TypeError, "ignore_index must be an int or None"),
    (dict(ignore_index=255.0), TypeError, "ignore_index must be an int or None"),
    (dict(ignore_index=np.float64(255)), TypeError, "ignore_index must be an int or None"),
    (dict(smooth_dr=np.float32(-1)), ValueError, "smooth_dr must be finite and >= 0, got -1.0"),
    (dict(weight=()), ValueError, "weight must hold one weight per class, got an empty sequence"),
    (dict(weight=(1.0, -1.0)), ValueError, "weight must be finite and >= 0"),
    (dict(weight=(1.0, float("nan"))), ValueError, "weight must be finite and >= 0"),
    (dict(weight=(0.0, 0.0)), ValueError, "weight must have a positive sum"),
    (dict(log_loss=True, negate=True), ValueError, "log_loss and DiceSpec.negate are exclusive"),
    (dict(average="micro", absent_classes="zero"), ValueError, "absent_classes applies to average='macro' only"),
    # Audit: a scalar weight used to fail with "'float' object is not iterable", a string was read
    # as its characters, and an ignore_index beyond int64 failed later with an OverflowError.
    (dict(weight=2.0), TypeError, "DiceSpec.weight must be a sequence of numbers"),
    (dict(weight="123"), TypeError, "DiceSpec.weight must be a sequence of numbers"),
    (dict(weight=torch.tensor(2.0)), TypeError, "DiceSpec.weight must be a sequence of numbers"),
    (dict(weight=("1", "2")), TypeError, "DiceSpec.weight must hold numbers"),
    (dict(weight=(True, 1.0)), TypeError, "DiceSpec.weight must hold numbers"),
    (dict(ignore_index=2**70), ValueError, "DiceSpec.ignore_index must fit in int64, got 1180591620717411303424"),
    (dict(ignore_index=-(2**63) - 1), ValueError, "DiceSpec.ignore_index must fit in int64"),
    (dict(squared=1), TypeError, "DiceSpec.squared must be True or False, got 1"),
    # The Dice family.
    (dict(fp_weight=0.3), ValueError, "fp_weight and DiceSpec.fn_weight go together"),
    (dict(fn_weight=0.3), ValueError, "fp_weight and DiceSpec.fn_weight go together"),
    (dict(fp_weight=-0.1, fn_weight=0.5), ValueError, "DiceSpec.fp_weight must be finite and >= 0"),
    (dict(fp_weight=0.5, fn_weight=float("inf")), ValueError, "DiceSpec.fn_weight must be finite and >= 0"),
    (dict(fp_weight="0.5", fn_weight=0.5), TypeError, "DiceSpec.fp_weight must be a number, got str"),
    (dict(fp_weight=0.3, fn_weight=0.7, beta=2.0), ValueError, "DiceSpec.beta must be 1 with fp_weight/fn_weight"),
    (dict(focal_gamma=0.0), ValueError, "DiceSpec.focal_gamma must be > 0, got 0.0"),
    (dict(focal_gamma=-1.0), ValueError, "DiceSpec.focal_gamma must be finite and >= 0"),
    (dict(focal_gamma=float("nan")), ValueError, "DiceSpec.focal_gamma must be finite and >= 0"),
    (dict(focal_gamma=2.0, log_loss=True), ValueError, "DiceSpec.focal_gamma applies to the 1 - score form"),
    (dict(focal_gamma=2.0, negate=True), ValueError, "DiceSpec.focal_gamma applies to the 1 - score form"),
    (dict(jaccard="yes"), TypeError, "DiceSpec.jaccard must be True or False"),
    (dict(jaccard=True, beta=2.0), ValueError, "DiceSpec.jaccard excludes beta != 1"),
    (dict(jaccard=True, fp_weight=0.5, fn_weight=0.5), ValueError, "DiceSpec.jaccard excludes"),
    (dict(generalized="squared"), ValueError, "DiceSpec.generalized must be one of (None, 'square', 'simple', 'uniform')"),
    (dict(generalized=True), ValueError, "DiceSpec.generalized must be one of"),
    (dict(generalized="square", average="micro"), ValueError, "DiceSpec.generalized pools the classes itself"),
    (dict(generalized="square", weight=(1.0, 2.0)), ValueError, "DiceSpec.generalized computes its own class weights"),
    (dict(generalized="simple", absent_classes="zero"), ValueError, "DiceSpec.generalized has its own absent-class rule"),
    (dict(soft_label=None), TypeError, "DiceSpec.soft_label must be True or False"),
]


def test_numpy_scalars_become_python_numbers():
    """Configs and arrays give NumPy scalars (MONAI accepts ignore_index=np.int64(255)): they are
    stored as the Python int or float of the same value, so the spec compares and hashes alike."""
    spec = DiceSpec(ignore_index=np.int64(255), smooth_nr=np.float32(0.5), fp_weight=np.float16(0.25),
                    fn_weight=np.int32(1), focal_gamma=np.int8(2))
    assert spec == DiceSpec(ignore_index=255, smooth_nr=0.5, fp_weight=0.25, fn_weight=1, focal_gamma=2)
    assert type(spec.ignore_index) is int and type(spec.smooth_nr) is float and type(spec.fn_weight) is int


@pytest.mark.parametrize("fields,error,message", POST_INIT_ERRORS, ids=[str(c[0]) for c in POST_INIT_ERRORS])
def test_post_init_rejects_bad_fields(fields, error, message):
    with pytest.raises(error) as raised:
        DiceSpec(**fields)
    assert message in str(raised.value)


def test_unknown_constructor_keyword_is_named():
    with pytest.raises(TypeError, match="smoothing"):
        DiceSpec(smoothing=1.0)


@pytest.mark.parametrize("fields", [dict(smooth_nr=0, smooth_dr=0), dict(beta=0.0), dict(ignore_index=-100),
                                    dict(weight=(0.0, 1.0)), dict(min_denominator=1), dict(ignore_index=2**63 - 1),
                                    dict(ignore_index=-(2**63)), dict(weight=[1, 2.5]), dict(weight=torch.tensor([1.0, 2.0])),
                                    dict(fp_weight=0, fn_weight=0), dict(fp_weight=2.0, fn_weight=0.5),
                                    dict(focal_gamma=0.1), dict(focal_gamma=3), dict(jaccard=True, squared=True),
                                    dict(generalized="uniform", batch=True), dict(soft_label=True, squared=True),
                                    dict(jaccard=True, generalized="square", focal_gamma=2.0, soft_label=True)])
def test_post_init_accepts_boundary_values(fields):
    DiceSpec(**fields)


def test_weight_becomes_a_tuple_of_floats():
    assert DiceSpec(weight=[1, 2.5]).weight == (1.0, 2.5)
    assert DiceSpec(weight=torch.tensor([1.0, 2.0])).weight == (1.0, 2.0)


def test_family_fields_default_to_plain_dice():
    spec = DiceSpec()
    assert (spec.fp_weight, spec.fn_weight, spec.focal_gamma, spec.jaccard, spec.generalized, spec.soft_label) == (
        None, None, 1.0, False, None, False)
    logits, labels = random_inputs((2, 6, 5), 3, seed=33)
    explicit = DiceSpec(fp_weight=None, fn_weight=None, focal_gamma=1.0, jaccard=False, generalized=None, soft_label=False)
    assert dice_loss(logits, labels, explicit).item() == dice_loss(logits, labels).item()
