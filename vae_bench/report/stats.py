"""Statistics that hold at 3 seeds: Student-t intervals of means, paired t and Welch t tests of
differences, and Holm's step-down adjustment across the tests of one table.

A percentile bootstrap over 2–3 seeds can never be wider than the range of the seeds' values,
so it under-covers exactly where this benchmark lives; the t interval widens with the small n
as it should."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats

CONFIDENCE = 0.95
ALPHA = 0.05  # family-wise error rate of one comparison table (after Holm)
PAIRED = "paired t"
WELCH = "Welch t"


def t_quantile(df: float) -> float:
    return float(scipy_stats.t.ppf(1 - (1 - CONFIDENCE) / 2, df))


@dataclass
class Stat:
    """Final values of one metric over the completed seeds of a variant."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if self.n > 1 else None

    @property
    def ci(self) -> tuple[float, float] | None:
        """Student-t 95% CI of the mean; None for one seed or seeds that all agree, where a
        t interval has no spread to scale and any interval would be made up."""
        if self.n < 2 or self.std == 0:
            return None
        half = t_quantile(self.n - 1) * self.std / math.sqrt(self.n)
        return self.mean - half, self.mean + half

    @property
    def no_ci_reason(self) -> str:
        return "1 seed" if self.n == 1 else "all seeds equal"


@dataclass
class TestResult:
    """Difference of means variant − baseline and its test; ci/p are None when no test is
    possible, and `method` then says why."""

    difference: float | None
    ci: tuple[float, float] | None
    p_value: float | None
    method: str
    n_variant: int
    n_baseline: int
    paired: bool = False
    p_holm: float | None = None

    @property
    def tested(self) -> bool:
        return self.p_value is not None

    @property
    def beyond_noise(self) -> bool | None:
        return None if self.p_holm is None else self.p_holm < ALPHA


def paired_t(variant: Sequence[float], baseline: Sequence[float]) -> TestResult:
    """Paired by seed (variant[i] and baseline[i] share seed i): the mean of the per-seed
    differences and Student's t on them, with n−1 degrees of freedom."""
    d = np.asarray(variant, dtype=float) - np.asarray(baseline, dtype=float)
    n = len(d)
    mean = float(d.mean())
    if n < 2:
        return TestResult(mean, None, None, "none: 1 seed pair, no spread to test against",
                          n, n, paired=True)
    # Equal differences, not sd == 0: the mean of three 0.0125s rounds, and their sd is 1e-18.
    if np.all(d == d[0]):
        return TestResult(mean, None, None, "none: every seed pair differs by the same amount "
                          "(zero variance)", n, n, paired=True)
    p = float(scipy_stats.ttest_rel(variant, baseline).pvalue)
    half = t_quantile(n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return TestResult(mean, (mean - half, mean + half), p, PAIRED, n, n, paired=True)


def welch_t(a: Sequence[float], b: Sequence[float]) -> TestResult:
    """Unpaired: Welch's t (unequal variances), CI on Welch–Satterthwaite degrees of freedom."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    difference = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return TestResult(difference, None, None, "none: 1 seed on a side, its spread unknown",
                          len(x), len(y))
    # Constant sides, not se == 0: as in paired_t, a rounded mean leaves a variance of 1e-36.
    if np.all(x == x[0]) and np.all(y == y[0]):
        return TestResult(difference, None, None, "none: zero variance on both sides",
                          len(x), len(y))
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    p = float(scipy_stats.ttest_ind(x, y, equal_var=False).pvalue)
    half = t_quantile(df) * se
    return TestResult(difference, (difference - half, difference + half), p, WELCH,
                      len(x), len(y))


def fisher_exact_p(diverged_a: int, finished_a: int, diverged_b: int, finished_b: int) -> float:
    """Two-sided Fisher exact p-value for diverged vs completed, side a against side b: exact
    at any n (at 3 seeds a side, even 3/3 against 0/3 gives p = 0.1)."""
    table = [[diverged_a, finished_a - diverged_a], [diverged_b, finished_b - diverged_b]]
    return float(scipy_stats.fisher_exact(table).pvalue)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the order given: the i-th smallest of m is
    multiplied by m − i + 1, made monotone, capped at 1. Controls the family-wise error rate
    without assuming the tests are independent (they are not: ELBO, NLL and KL share runs)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [0.0] * len(p_values)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def adjust_family(results: Sequence[TestResult]) -> None:
    """Holm over the tested results of one family, written into each result's p_holm."""
    tested = [r for r in results if r.tested]
    for result, adjusted in zip(tested, holm([r.p_value for r in tested])):
        result.p_holm = adjusted
