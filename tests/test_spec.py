"""DiceSpec: presets and how they differ, replace(), and the errors of __post_init__."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from dice_impls import PRESETS, DiceSpec, dice_loss
from dice_impls.spec import field_names
from helpers import random_inputs

# What each peer's default is documented to be (DESIGN.md section 3, docs/conventions.md);
# fields not listed keep DiceSpec's defaults.
DOCUMENTED = {
    "monai": dict(activation="softmax", smooth_nr=1e-5, smooth_dr=1e-5, batch=False, include_background=True),
    "nnunet": dict(smooth_nr=1e-5, smooth_dr=1e-5, batch=True, include_background=False, min_denominator=1e-8,
                   negate=True),
    "smp": dict(smooth_nr=0.0, smooth_dr=0.0, batch=True, min_denominator=1e-7, absent_classes="zero"),
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
    (dict(weight=()), ValueError, "weight must hold one weight per class, got an empty sequence"),
    (dict(weight=(1.0, -1.0)), ValueError, "weight must be finite and >= 0"),
    (dict(weight=(1.0, float("nan"))), ValueError, "weight must be finite and >= 0"),
    (dict(weight=(0.0, 0.0)), ValueError, "weight must have a positive sum"),
    (dict(log_loss=True, negate=True), ValueError, "log_loss and DiceSpec.negate are exclusive"),
    (dict(average="micro", absent_classes="zero"), ValueError, "absent_classes applies to average='macro' only"),
]


@pytest.mark.parametrize("fields,error,message", POST_INIT_ERRORS, ids=[str(c[0]) for c in POST_INIT_ERRORS])
def test_post_init_rejects_bad_fields(fields, error, message):
    with pytest.raises(error) as raised:
        DiceSpec(**fields)
    assert message in str(raised.value)


def test_unknown_constructor_keyword_is_named():
    with pytest.raises(TypeError, match="smoothing"):
        DiceSpec(smoothing=1.0)


@pytest.mark.parametrize("fields", [dict(smooth_nr=0, smooth_dr=0), dict(beta=0.0), dict(ignore_index=-100),
                                    dict(weight=(0.0, 1.0)), dict(min_denominator=1)])
def test_post_init_accepts_boundary_values(fields):
    DiceSpec(**fields)
