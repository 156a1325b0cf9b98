"""analysis.stats against known cases and brute force: bootstrap coverage on normal samples, exact
quantiles where the resampling distribution is known, exact sign-flip p-values by enumeration, the
sign-flip interval as the inverted test, Holm and Clopper-Pearson on textbook examples, and the
coverage of the intervals on a bimodal paired difference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.stats import (EXACT_MAX_PAIRS, BimodalDifference, binomial_p_value, bootstrap_ci, clopper_pearson, holm,
                            interval_coverage, paired_difference, sign_flip_ci, sign_flip_p_value)


def test_bootstrap_interval_covers_the_mean_of_normal_samples():
    rng = np.random.default_rng(2024)
    repeats, n = 400, 30
    covered = 0
    for r in range(repeats):
        low, high = bootstrap_ci(rng.normal(3.0, 2.0, size=n), n_boot=2000, seed=r)
        covered += low <= 3.0 <= high
    # The percentile bootstrap's coverage at n = 30 is ~0.93 for a nominal 0.95; the binomial SD
    # of the observed share over 400 samples is ~0.013.
    assert 0.89 <= covered / repeats <= 0.98


def test_bootstrap_quantiles_of_a_known_resampling_distribution():
    # Resampled means of [0, 1] are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4.
    assert bootstrap_ci([0.0, 1.0], n_boot=20_000, level=0.95, seed=1) == (0.0, 1.0)
    assert bootstrap_ci([0.0, 1.0], n_boot=20_000, level=0.4, seed=1) == (0.5, 0.5)
    assert bootstrap_ci([2.5] * 7) == (2.5, 2.5)


def test_bootstrap_is_seeded_and_takes_any_axis_statistic():
    values = np.random.default_rng(0).exponential(size=25)
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    low, high = bootstrap_ci(values, statistic=np.median, seed=3)
    assert low <= np.median(values) <= high and low < high
    assert low >= values.min() and high <= values.max()


def test_nan_propagates_to_the_interval():
    low, high = bootstrap_ci([1.0, float("nan"), 2.0, 3.0])
    assert np.isnan(low) and np.isnan(high)
    result = paired_difference([1.0, float("nan"), 3.0], [0.0, 0.0, 0.0])
    assert np.isnan(result.ci_low) and np.isnan(result.p_value)


@pytest.mark.parametrize("call, message", [
    (lambda: bootstrap_ci([1.0]), "at least 2"), (lambda: bootstrap_ci([]), "at least 2"),
    (lambda: bootstrap_ci([[1.0, 2.0]]), "one-dimensional"), (lambda: bootstrap_ci([1.0, 2.0], level=1.0), "level"),
    (lambda: bootstrap_ci([1.0, 2.0], n_boot=0), "n_boot"),
    (lambda: paired_difference([1.0, 2.0], [1.0, 2.0, 3.0]), "same length"),
    (lambda: sign_flip_p_value([1.0, 2.0], alternative="bigger"), "alternative"),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_sign_flip_p_value_on_a_tiny_case_by_hand():
    # Sums of (+-1, +-2, +-3): 6, 4, 2, 0, 0, -2, -4, -6. Only +-6 reach |6|; only +6 reaches 6.
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == (2 / 8, True)
    assert sign_flip_p_value([1.0, 2.0, 3.0], alternative="greater") == (1 / 8, True)
    assert sign_flip_p_value([1.0, 2.0, 3.0], alternative="less") == (8 / 8, True)
    assert sign_flip_p_value([0.0, 0.0]) == (1.0, True)  # every pattern ties with a zero difference


def brute_force(d, alternative):
    sums = [sum(s * x for s, x in zip(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))]
    observed = sum(d)
    tol = 1e-9
    hits = {"two-sided": [abs(t) >= abs(observed) - tol for t in sums],
            "greater": [t >= observed - tol for t in sums], "less": [t <= observed + tol for t in sums]}[alternative]
    return sum(hits) / len(sums)


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("n", [2, 5, 9])
def test_exact_p_value_matches_brute_force(n, alternative):
    d = np.round(np.random.default_rng(n).normal(0.3, 1.0, size=n), 1)  # rounded: ties happen
    p, exact = sign_flip_p_value(d, alternative=alternative)
    assert exact and p == pytest.approx(brute_force(d.tolist(), alternative), abs=1e-12)


def test_monte_carlo_p_value_is_close_to_the_exact_one():
    n = EXACT_MAX_PAIRS + 1
    d = np.random.default_rng(7).normal(0.4, 1.0, size=n)
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    exact = np.mean(np.abs(signs @ d) >= abs(d.sum()) - 1e-12)
    p, is_exact = sign_flip_p_value(d, n_perm=20_000, seed=1)
    assert not is_exact and abs(p - exact) < 0.015  # Monte Carlo SD <= 0.0035
    assert 0 < exact < 0.5


def test_paired_difference_combines_the_interval_and_the_test_of_the_threshold():
    rng = np.random.default_rng(11)
    a = rng.normal(size=12)
    b = a - 0.5 + 0.1 * rng.normal(size=12)  # a is larger by ~0.5 on every pair
    result = paired_difference(a, b, seed=2, alternative="greater")
    assert result.mean == pytest.approx(np.mean(a - b)) and result.n == 12 and result.exact
    assert result.ci == sign_flip_ci(a - b) and result.ci_low > 0.4
    assert result.p_value == 1 / 2**12  # only the observed sign pattern is as large
    # against a threshold above every difference, "greater" is hopeless: p = 1, not 1/4096
    assert paired_difference(a, b, alternative="greater", threshold=1.0).p_value == 1.0
    null = paired_difference(a, a + 0.01 * rng.normal(size=12), seed=2)
    assert null.ci_low < 0 < null.ci_high and null.p_value > 0.05


@pytest.mark.parametrize("n", [6, 9, EXACT_MAX_PAIRS + 4])
def test_sign_flip_interval_is_the_inverted_test(n):
    d = np.random.default_rng(n).normal(0.2, 1.0, size=n)
    low, high = sign_flip_ci(d, level=0.95, n_perm=4000, seed=3)
    assert low < d.mean() < high
    for c in np.linspace(d.min(), d.max(), 41):  # the interval excludes c exactly when a one-sided test rejects it
        greater = sign_flip_p_value(d - c, "greater", n_perm=4000, seed=3)[0]
        less = sign_flip_p_value(d - c, "less", n_perm=4000, seed=3)[0]
        assert (low > c) == (greater <= 0.025) and (high < c) == (less <= 0.025), c


def test_sign_flip_interval_on_tiny_samples_and_nan():
    assert sign_flip_ci([1.0, 2.0, 3.0, 4.0, 5.0]) == (-np.inf, np.inf)  # 2^5 = 32 patterns cannot reach 2.5 %
    # n = 6: 64 patterns, 1/64 <= 0.025: the lowest pattern mean (the smallest value) bounds the interval
    assert sign_flip_ci([1.0, 2.0, 3.0, 4.0, 5.0, 6.0]) == (1.0, 6.0)
    assert np.isnan(sign_flip_ci([1.0, np.nan, 2.0, 3.0, 4.0, 5.0])).all()


def test_sign_flip_interval_covers_the_centre_of_symmetric_samples():
    rng = np.random.default_rng(5)
    covered = sum(low <= 1.0 <= high for low, high in (sign_flip_ci(rng.normal(1.0, 2.0, 10)) for _ in range(300)))
    assert covered / 300 >= 0.92  # exact for a symmetric distribution (binomial SD of the share ~0.013)


def test_holm_on_the_textbook_example():
    # Holm (1979), as in the usual worked example: four hypotheses, alpha = 0.05. Sorted p: 0.005, 0.01,
    # 0.03, 0.04 -> 4 x 0.005 = 0.02, 3 x 0.01 = 0.03, 2 x 0.03 = 0.06, max(1 x 0.04, 0.06) = 0.06;
    # H4 and H1 are rejected, H3 and H2 are not.
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02], abs=1e-15)
    assert (adjusted <= 0.05).tolist() == [True, False, False, True]
    assert holm([0.5]).tolist() == [0.5] and holm([0.3, 0.6]).tolist() == [0.6, 0.6]
    assert holm([np.nan, 0.01]).tolist() == [1.0, 0.02]  # a NaN counts as 1
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        holm([1.5])


def test_binomial_test_and_clopper_pearson_on_known_cases():
    assert binomial_p_value(3, 3, 0.5) == pytest.approx(0.125) and binomial_p_value(0, 3, 0.5, "less") == pytest.approx(0.125)
    assert binomial_p_value(0, 5, 0.2) == 1.0
    # R: binom.test(5, 20)$conf.int = 0.08657147 0.49104587; 0/20: upper 1 - 0.025^(1/20)
    assert clopper_pearson(5, 20) == pytest.approx((0.08657147, 0.49104587), abs=1e-7)
    assert clopper_pearson(0, 20) == pytest.approx((0.0, 1 - 0.025 ** (1 / 20)), abs=1e-9)
    low, high = clopper_pearson(20, 20)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 20), abs=1e-9)
    for bad in ((3, 2), (-1, 5), (1, 0)):
        with pytest.raises(ValueError, match="successes <= trials"):
            clopper_pearson(*bad)


def test_coverage_on_a_bimodal_paired_difference():
    """10 % of the pairs fail (difference -0.8 instead of +0.05 +- 0.05). Any interval of the mean of
    that mixture misses whenever a sample shows no failure (0.9^10 = 35 % of samples of 10), as the
    percentile bootstrap does; splitting the failure rate (Clopper-Pearson) from the mean of the
    pairs that did not fail (sign-flip interval) keeps the nominal coverage."""
    assert interval_coverage("percentile", 10, simulations=300, seed=1) < 0.8
    assert interval_coverage("split", 20, simulations=300, seed=1) >= 0.90
    assert interval_coverage("split", 10, simulations=300, seed=2) >= 0.90
    assert BimodalDifference().mean == pytest.approx(0.05 - 0.08)
    with pytest.raises(ValueError, match="method"):
        interval_coverage("bca", 10)
