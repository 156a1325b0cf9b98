"""analysis.stats against known cases and brute force: bootstrap coverage on normal samples, exact
quantiles where the resampling distribution is known, exact sign-flip p-values by enumeration."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from analysis.stats import EXACT_MAX_PAIRS, bootstrap_ci, paired_difference, sign_flip_p_value


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


def test_paired_difference_combines_the_bootstrap_and_the_test():
    rng = np.random.default_rng(11)
    a = rng.normal(size=12)
    b = a - 0.5 + 0.1 * rng.normal(size=12)  # a is larger by ~0.5 on every pair
    result = paired_difference(a, b, seed=2, alternative="greater")
    assert result.mean == pytest.approx(np.mean(a - b)) and result.n == 12 and result.exact
    assert result.ci == bootstrap_ci(a - b, seed=2) and result.ci_low > 0.4
    assert result.p_value == 1 / 2**12  # only the observed sign pattern is as large
    null = paired_difference(a, a + 0.01 * rng.normal(size=12), seed=2)
    assert null.ci_low < 0 < null.ci_high and null.p_value > 0.05
