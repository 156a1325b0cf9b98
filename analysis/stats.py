"""Confidence intervals, tests and multiplicity control for the experiments' claims (numpy only).

Every function is seeded or exact, so a claim computed twice from the same data gives the same numbers.

- :func:`bootstrap_ci`: the percentile bootstrap (``n_boot`` resamples with replacement, the
  ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the statistic). Used for figures' bands;
  it is too narrow with few values (a 95 % interval of a normal mean covers ~91 % at n = 10) and
  far too narrow on bimodal samples (see :func:`interval_coverage`).
- :func:`sign_flip_p_value`: the paired sign-flip permutation test. Under "the differences
  ``d_i`` are symmetric about 0" each ``d_i`` is as likely to be ``-d_i``, so the ``2^n`` sign
  patterns are equally likely; the p-value is the share of them whose mean is at least as extreme
  as the observed one. Exact (every pattern) for ``n <= EXACT_MAX_PAIRS``; above that ``n_perm``
  random patterns and ``(1 + hits) / (1 + n_perm)``, which never understates the p-value.
- :func:`sign_flip_ci`: the interval that inverts that test: the shifts ``delta`` for which neither
  one-sided test of ``d - delta`` rejects at ``(1 - level) / 2``. Its ends are subset means of the
  differences, so it is exact for symmetric differences and agrees with the test by construction:
  it excludes a threshold exactly when the one-sided p-value against that threshold is at most
  ``(1 - level) / 2``.
- :func:`paired_difference`: the mean of ``a - b``, :func:`sign_flip_ci` and the one-sided p-value
  of the claim's *threshold* (the test applied to ``d - threshold``), not of 0.
- :func:`binomial_p_value`, :func:`clopper_pearson`: the exact binomial test of a rate (e.g. the
  share of collapsed runs) and the interval that inverts it.
- :func:`holm`: Holm's step-down adjustment over one family of p-values (the primary hypotheses).
- :func:`interval_coverage`: the coverage of the intervals on simulated bimodal paired
  differences (:class:`BimodalDifference`, a share of pairs where one run failed). No interval of
  the *mean* of such a mixture can keep its coverage with few pairs, since a sample without a
  failure (``0.9^n`` of them) looks like a unimodal one; the protocol therefore reports the failure
  rate (Clopper-Pearson) beside the mean of the runs that did not fail (sign-flip), the ``"split"``
  method, whose coverage the tests check.

A NaN among the values propagates: the statistic and both ends of the interval are NaN (so a claim
built on them fails) rather than silently dropping a diverged run.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Tuple

import numpy as np

EXACT_MAX_PAIRS = 16  # 2^16 sign patterns: enumerated in well under a second
ALTERNATIVES = ("two-sided", "greater", "less")


def _sample(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if array.size < 2:
        raise ValueError(f"{name} needs at least 2 values for an interval, got {array.size}")
    return array


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")


def bootstrap_ci(values, statistic: Callable = np.mean, n_boot: int = 10_000, level: float = 0.95,
                 seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap ``level`` interval ``(low, high)`` of ``statistic(values)``.

    ``statistic`` must accept an array and ``axis=`` (``np.mean``, ``np.median``, ...): it is
    applied to all ``n_boot`` resamples at once, along axis 1.
    """
    array = _sample(values, "values")
    _check_level(level)
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    rng = np.random.default_rng(seed)
    resamples = array[rng.integers(0, array.size, size=(n_boot, array.size))]
    replicates = np.asarray(statistic(resamples, axis=1), dtype=np.float64)
    if np.isnan(replicates).any():
        return float("nan"), float("nan")
    low, high = np.quantile(replicates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class PairedDifference:
    """``mean`` of ``a - b``, its bootstrap interval, and the sign-flip permutation p-value."""

    mean: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    exact: bool  # the p-value enumerated every sign pattern

    @property
    def ci(self) -> Tuple[float, float]:
        return self.ci_low, self.ci_high


def sign_flip_p_value(differences, alternative: str = "two-sided", n_perm: int = 20_000, seed: int = 0) -> Tuple[float, bool]:
    """``(p, exact)``: the paired sign-flip permutation p-value of mean(``differences``) = 0.

    ``alternative``: ``"two-sided"`` (|mean| at least as large), ``"greater"`` (mean at least as
    large: evidence that ``a > b``) or ``"less"``.
    """
    d = _sample(differences, "differences")
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {ALTERNATIVES}, not {alternative!r}")
    if np.isnan(d).any():
        return float("nan"), d.size <= EXACT_MAX_PAIRS
    signs, exact = _sign_patterns(d.size, n_perm, seed)
    flipped = signs @ d
    observed = d.sum()
    # Sums that equal the observed one in exact arithmetic may differ in the last bits.
    slack = 1e-12 * np.abs(d).sum()
    if alternative == "two-sided":
        hits = np.count_nonzero(np.abs(flipped) >= abs(observed) - slack)
    elif alternative == "greater":
        hits = np.count_nonzero(flipped >= observed - slack)
    else:
        hits = np.count_nonzero(flipped <= observed + slack)
    p = hits / len(signs) if exact else (1 + hits) / (1 + n_perm)
    return float(p), exact


@lru_cache(maxsize=None)
def _every_sign_pattern(n: int) -> np.ndarray:
    patterns = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    patterns.flags.writeable = False
    return patterns


def _sign_patterns(n: int, n_perm: int, seed: int) -> Tuple[np.ndarray, bool]:
    """``(signs, exact)``: every one of the ``2^n`` sign patterns (rows of +-1) for ``n <=
    EXACT_MAX_PAIRS``, else ``n_perm`` random ones (the first all +1 or not, as drawn)."""
    if n <= EXACT_MAX_PAIRS:
        return _every_sign_pattern(n), True
    return np.random.default_rng(seed).choice((1.0, -1.0), size=(n_perm, n)), False


def sign_flip_ci(differences, level: float = 0.95, n_perm: int = 20_000, seed: int = 0) -> Tuple[float, float]:
    """The ``level`` interval of the mean difference that inverts the one-sided sign-flip tests:
    every shift ``delta`` that neither ``"greater"`` nor ``"less"`` rejects at ``(1 - level) / 2``
    when applied to ``differences - delta`` (see the module docstring). Same patterns (``n_perm``,
    ``seed``) as :func:`sign_flip_p_value`, so the interval excludes a threshold exactly when that
    test's one-sided p-value against it is at most ``(1 - level) / 2``. Infinite ends when too
    few pairs can reject anything (``2^n < 2 / (1 - level)``)."""
    d = _sample(differences, "differences")
    _check_level(level)
    if np.isnan(d).any():
        return float("nan"), float("nan")
    signs, exact = _sign_patterns(d.size, n_perm, seed)
    flipped = signs < 0
    counts = flipped.sum(1)
    # A pattern ties or beats the observed mean of d - delta, in the "greater" direction, exactly
    # when delta >= the mean of d over its flipped pairs (always, when it flips none).
    means = np.sort((flipped @ d)[counts > 0] / counts[counts > 0])
    always = int(np.count_nonzero(counts == 0))
    total = len(signs) if exact else len(signs) + 1
    always += 0 if exact else 1  # the Monte Carlo p-value's (1 + hits) / (1 + n_perm)
    # the smallest number j of subset means at or below delta with (always + j) / total > alpha / 2
    j = int(np.floor((1 - level) / 2 * total - always)) + 1
    if j <= 0:
        return -math.inf, math.inf
    return float(means[j - 1]), float(means[-j])


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` (one family): the ``k``-th smallest becomes
    ``max over i <= k of min(1, (m - i + 1) p_(i))``; reject where the adjusted p is at most the
    family-wise level. A NaN p-value counts as 1 (its claim fails anyway)."""
    p = np.nan_to_num(np.asarray(p_values, dtype=np.float64).reshape(-1), nan=1.0)
    if ((p < 0) | (p > 1)).any():
        raise ValueError(f"p-values must lie in [0, 1], got {p.tolist()}")
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (p.size - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def binomial_p_value(successes: int, trials: int, p0: float, alternative: str = "greater") -> float:
    """Exact one-sided binomial test of the rate ``p0``: ``P(X >= successes)`` (``"greater"``) or
    ``P(X <= successes)`` (``"less"``) for ``X ~ Binomial(trials, p0)``."""
    _check_counts(successes, trials)
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', not {alternative!r}")
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"p0 must lie in [0, 1], got {p0}")
    ks = range(successes, trials + 1) if alternative == "greater" else range(0, successes + 1)
    return min(1.0, sum(_binomial_pmf(k, trials, p0) for k in ks))


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> Tuple[float, float]:
    """The exact (Clopper-Pearson) ``level`` interval of a binomial rate: the rates ``p0`` that neither
    one-sided :func:`binomial_p_value` rejects at ``(1 - level) / 2`` (found by bisection)."""
    _check_counts(successes, trials)
    _check_level(level)
    alpha = (1 - level) / 2

    def solve(alternative: str) -> float:
        low, high = 0.0, 1.0  # the tail grows with p0 for "greater" and shrinks for "less"
        for _ in range(60):
            mid = (low + high) / 2
            tail = binomial_p_value(successes, trials, mid, alternative)
            if (tail < alpha) == (alternative == "greater"):
                low = mid
            else:
                high = mid
        return (low + high) / 2

    return (0.0 if successes == 0 else solve("greater"), 1.0 if successes == trials else solve("less"))


def _binomial_pmf(k: int, n: int, p: float) -> float:
    if p in (0.0, 1.0):
        return float(k == (n if p == 1.0 else 0))
    return math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
                    + (n - k) * math.log1p(-p))


def _check_counts(successes: int, trials: int) -> None:
    if not (isinstance(successes, (int, np.integer)) and isinstance(trials, (int, np.integer))
            and 0 <= successes <= trials and trials >= 1):
        raise ValueError(f"need integers 0 <= successes <= trials, trials >= 1, got {successes} and {trials}")


def paired_difference(a, b, level: float = 0.95, seed: int = 0, alternative: str = "two-sided",
                      n_perm: int = 20_000, threshold: float = 0.0) -> PairedDifference:
    """Mean of ``a - b`` over pairs (``a[i]`` and ``b[i]`` measured on the same seed/setting), its
    sign-flip interval (:func:`sign_flip_ci`) and the sign-flip p-value of "the mean difference is
    ``threshold``" against ``alternative`` (the test applied to ``a - b - threshold``)."""
    a, b = _sample(a, "a"), _sample(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples must have the same length, got {a.size} and {b.size}")
    d = a - b
    low, high = sign_flip_ci(d, level=level, n_perm=n_perm, seed=seed)
    p, exact = sign_flip_p_value(d - threshold, alternative=alternative, n_perm=n_perm, seed=seed)
    return PairedDifference(float(d.mean()), low, high, p, int(d.size), exact)


# ---- coverage of the intervals on a bimodal paired difference ----------------------------------

COVERAGE_METHODS = ("percentile", "sign_flip", "split")


@dataclass(frozen=True)
class BimodalDifference:
    """Paired differences ``N(effect, spread^2)``, plus ``failure`` on a share ``failure_rate`` of the
    pairs (one loss collapses on that seed). Defaults: a DSC difference of +0.05 between two
    trained runs, and -0.8 where one of them collapsed, 10 % of the time."""

    effect: float = 0.05
    spread: float = 0.05
    failure: float = -0.8
    failure_rate: float = 0.1

    def draw(self, n: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """``(differences, failed)`` of ``n`` pairs."""
        failed = rng.random(n) < self.failure_rate
        return rng.normal(self.effect, self.spread, n) + self.failure * failed, failed

    @property
    def mean(self) -> float:
        return self.effect + self.failure_rate * self.failure


def interval_coverage(method: str, n: int, model: BimodalDifference = BimodalDifference(), simulations: int = 1000,
                      level: float = 0.95, seed: int = 0, n_resamples: int = 2000) -> float:
    """The share of ``simulations`` samples of ``n`` pairs from ``model`` whose ``level`` interval
    covers the truth. ``method``:

    - ``"percentile"``: the percentile bootstrap of the mean difference (truth: ``model.mean``);
    - ``"sign_flip"``: :func:`sign_flip_ci` of the mean difference (truth: ``model.mean``);
    - ``"split"``: the protocol's split, covered when *both* the Clopper-Pearson interval of the
      failure rate covers ``model.failure_rate`` and :func:`sign_flip_ci` of the pairs that did not
      fail covers ``model.effect`` (a sample without two such pairs counts as not covered).

    ``n_resamples`` sets the bootstrap's resamples and the sign-flip's random patterns.
    """
    if method not in COVERAGE_METHODS:
        raise ValueError(f"method must be one of {COVERAGE_METHODS}, not {method!r}")
    if n < 2 or simulations < 1:
        raise ValueError(f"need n >= 2 pairs and simulations >= 1, got {n} and {simulations}")
    rng = np.random.default_rng(seed)
    covered = 0
    for i in range(simulations):
        d, failed = model.draw(n, rng)
        if method == "percentile":
            low, high = bootstrap_ci(d, n_boot=n_resamples, level=level, seed=i)
            covered += low <= model.mean <= high
        elif method == "sign_flip":
            low, high = sign_flip_ci(d, level=level, n_perm=n_resamples, seed=i)
            covered += low <= model.mean <= high
        elif np.count_nonzero(~failed) >= 2:
            rate_low, rate_high = clopper_pearson(int(failed.sum()), n, level)
            low, high = sign_flip_ci(d[~failed], level=level, n_perm=n_resamples, seed=i)
            covered += rate_low <= model.failure_rate <= rate_high and low <= model.effect <= high
    return covered / simulations
