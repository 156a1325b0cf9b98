"""Half-precision logits where a class covers more than 65504 pixels, the largest float16.

A float16 sum of such a class is inf; "mixed" (and any implementation registered as summing in
float32, like "fused") must stay within 1e-3 of the float64 reference there. The plain half
paths ("vectorized" in float16/bfloat16) are shown to fail, so these tests prove the problem exists.
"""

from __future__ import annotations

import pytest
import torch

import dice_impls
from dice_impls import DiceSpec, dice_loss, dice_statistics
from helpers import error, random_inputs

FP16_MAX = torch.finfo(torch.float16).max  # 65504
WIDE_SUM_IMPLS = [name for name in ("mixed", "fused") if name in dice_impls.IMPLEMENTATIONS]
# (label-map shape, channels): about half of the pixels, over 65504, in each class.
LARGE_CASES = {"2d-512x512": ((1, 512, 512), 2), "3d-64x64x40": ((1, 64, 64, 40), 2)}
HALF = {"float16": torch.float16, "bfloat16": torch.bfloat16}
# Gradient: max error over max |reference gradient|. The per-pixel gradients here are about 1e-6,
# float16 subnormals (spacing 6e-8), so float16 holds them to a few percent (measured 0.031 on
# the 2-D case); bfloat16 has float32's range and 8 bits of mantissa (measured 0.0065).
GRAD_TOLERANCE = {torch.float16: 0.05, torch.bfloat16: 0.02}


def large_inputs(case: str, dtype: torch.dtype):
    shape, channels = LARGE_CASES[case]
    logits, labels = random_inputs(shape, channels, dtype, seed=21)
    counts = torch.bincount(labels.flatten(), minlength=channels)
    assert (counts > FP16_MAX).all(), f"every class must cover more than 65504 pixels, got {counts.tolist()}"
    return logits, labels


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Max error over max |expected| (inf if ``actual`` is not finite)."""
    return error(actual, expected, floor=0.0)


@pytest.mark.parametrize("batch", [False, True], ids=["per-image", "batch"])
@pytest.mark.parametrize("dtype", list(HALF.values()), ids=list(HALF))
@pytest.mark.parametrize("case", list(LARGE_CASES))
@pytest.mark.parametrize("impl", WIDE_SUM_IMPLS)
def test_wide_sums_stay_within_1e3_past_fp16_max(impl, case, dtype, batch):
    check_wide_sums(impl, case, dtype, DiceSpec(batch=batch))


# The Dice family scores the same float32 sums: generalized "square" weights are 1/G**2 ~ 6e-11
# here, far inside float32's range (a float16 G of inf would make them 0).
FAMILY_SPECS = {
    "generalized-square": DiceSpec(generalized="square"),
    "tversky-focal-batch": DiceSpec(fp_weight=0.3, fn_weight=0.7, focal_gamma=2.0, batch=True),
    "jaccard": DiceSpec(jaccard=True),
}


@pytest.mark.parametrize("spec", list(FAMILY_SPECS.values()), ids=list(FAMILY_SPECS))
@pytest.mark.parametrize("dtype", list(HALF.values()), ids=list(HALF))
@pytest.mark.parametrize("impl", WIDE_SUM_IMPLS)
def test_family_wide_sums_stay_within_1e3_past_fp16_max(impl, dtype, spec):
    check_wide_sums(impl, "2d-512x512", dtype, spec)


def check_wide_sums(impl, case, dtype, spec):
    logits, labels = large_inputs(case, dtype)
    x = logits.clone().requires_grad_()
    loss = dice_loss(x, labels, spec, impl=impl)
    x_ref = logits.double().requires_grad_()
    expected = dice_loss(x_ref, labels, spec, impl="reference")
    assert relative_error(loss, expected) <= 1e-3

    loss.backward()
    expected.backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()
    assert relative_error(x.grad, x_ref.grad) <= GRAD_TOLERANCE[dtype]
    cosine = torch.nn.functional.cosine_similarity(x.grad.double().flatten(), x_ref.grad.flatten(), dim=0)
    assert cosine > 0.999


@pytest.mark.parametrize("case", list(LARGE_CASES))
def test_plain_fp16_sum_overflows(case):
    logits, labels = large_inputs(case, torch.float16)
    stats = dice_statistics(logits, labels, impl="vectorized")
    assert torch.isinf(stats.target_sum).all() and torch.isinf(stats.pred_sum).all()
    x = logits.clone().requires_grad_()
    loss = dice_loss(x, labels, impl="vectorized")
    expected = dice_loss(logits.double(), labels, impl="reference")
    assert not torch.isfinite(loss) or relative_error(loss, expected) > 1e-2
    # An inf denominator scores 0 whatever the logits: training gets no signal at all.
    loss.backward()
    assert not torch.isfinite(x.grad).all() or not x.grad.any()
    # The same sums in float32 are exact counts: the overflow is the dtype's, not the data's.
    exact = torch.bincount(labels.flatten(), minlength=2).float()
    assert torch.equal(dice_statistics(logits, labels, impl="mixed").target_sum[0], exact)


def test_plain_fp16_is_fine_below_fp16_max():
    # Control for the test above: the same implementation at 128x128 (8192 pixels per class).
    logits, labels = random_inputs((1, 128, 128), 2, torch.float16, seed=22)
    loss = dice_loss(logits, labels, impl="vectorized")
    assert relative_error(loss, dice_loss(logits.double(), labels, impl="reference")) <= 1e-3


def test_plain_bf16_sum_rounds_the_pixel_count():
    # bfloat16 does not overflow, but holds integers above 256 only to 8 bits: a count of ~131k
    # pixels comes back rounded to a multiple of 512 or 1024, while float32 sums keep it exact.
    logits, labels = large_inputs("2d-512x512", torch.bfloat16)
    exact = torch.bincount(labels.flatten(), minlength=2).float()
    plain = dice_statistics(logits, labels, impl="vectorized").target_sum[0]
    assert not torch.equal(plain, exact)
    assert float((plain - exact).abs().max() / exact.max()) < 2**-8  # rounded, not garbage
    for impl in WIDE_SUM_IMPLS:
        assert torch.equal(dice_statistics(logits, labels, impl=impl).target_sum[0], exact)
