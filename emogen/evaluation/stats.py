"""Paired comparisons of two experiment conditions: pure functions over numbers.

- `paired_comparison(values, reference)`: the differences of pairs that share a key (a
  seed, or a (fold, seed): the caller chooses the key), their mean, a
  95 % confidence interval from the paired t distribution, the paired t-test and the
  Wilcoxon signed-rank p-values (scipy.stats).
- `bootstrap_ci(differences)`: a percentile bootstrap interval of the mean over test
  speakers (scipy.stats.bootstrap with a seeded numpy Generator).
- `significant(p, alpha)`: the verdict a report states.

A statistic that cannot be computed (fewer than 2 pairs; all differences equal, where
scipy's t-test gives p = 0 for any non-zero difference) is None, never NaN, and `note`
says why, so a report can say what the test needs.
"""

from __future__ import annotations

import warnings
from typing import Hashable, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import stats as sp_stats

CONFIDENCE = 0.95
ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 9999  # scipy's default
MIN_PAIRS = 2  # a paired t-test estimates a variance: 1 pair has none


class _Record(BaseModel):
    model_config = ConfigDict(extra="ignore")


class PairedComparison(_Record):
    """Condition minus reference over the pairs both have."""

    n: int  # pairs
    pairs: list[str] = Field(default_factory=list)  # the shared keys, in order
    differences: list[float] = Field(default_factory=list)
    mean: float | None = None
    confidence: float = CONFIDENCE
    ci_low: float | None = None
    ci_high: float | None = None
    t_p: float | None = None  # paired t-test, two-sided
    wilcoxon_p: float | None = None  # Wilcoxon signed-rank, two-sided, scipy's defaults for zeros and ties
    note: str | None = None  # why a statistic is None


class BootstrapInterval(_Record):
    """A percentile bootstrap interval of the mean of per-unit (per-speaker) values."""

    n: int  # units resampled (speakers)
    units: list[str] = Field(default_factory=list)
    values: list[float] = Field(default_factory=list)
    mean: float | None = None
    confidence: float = CONFIDENCE
    ci_low: float | None = None
    ci_high: float | None = None
    resamples: int = BOOTSTRAP_RESAMPLES
    seed: int = 0
    note: str | None = None


def _finite(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def paired_comparison(values: Mapping[Hashable, float], reference: Mapping[Hashable, float],
                      confidence: float = CONFIDENCE) -> PairedComparison:
    """values[k] - reference[k] for every key k in both; keys in sorted order."""
    keys = sorted(set(values) & set(reference), key=str)
    differences = np.asarray([float(values[k]) - float(reference[k]) for k in keys], dtype=np.float64)
    n = len(keys)
    base = {"n": n, "pairs": [str(k) for k in keys], "differences": differences.tolist(), "confidence": confidence}
    if n == 0:
        return PairedComparison(**base, note="no shared pairs: nothing to compare")
    mean = float(differences.mean())
    if n < MIN_PAIRS:
        return PairedComparison(**base, mean=mean, note=f"{n} pair: a paired test needs at least {MIN_PAIRS} pairs")
    notes = []
    with warnings.catch_warnings():
        # scipy warns on identical differences and on small samples; the numbers (or None) say it
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        if np.ptp(differences) == 0:
            # scipy gives p = 0 for equal non-zero differences: a zero-width interval is
            # no evidence (small test sets make equal differences likely), so no t-test
            t_p, ci_low, ci_high = None, None, None
            notes.append("all differences are equal: the t-test has no spread to test against")
        else:
            t = sp_stats.ttest_1samp(differences, 0.0)
            interval = t.confidence_interval(confidence)
            t_p, ci_low, ci_high = _finite(t.pvalue), _finite(interval.low), _finite(interval.high)
        try:
            wilcoxon_p = _finite(sp_stats.wilcoxon(differences).pvalue)
        except ValueError as error:  # e.g. every difference zero under a zero_method that drops them
            wilcoxon_p = None
            notes.append(f"Wilcoxon: {error}")
    return PairedComparison(**base, mean=mean, ci_low=ci_low, ci_high=ci_high, t_p=t_p,
                            wilcoxon_p=wilcoxon_p, note="; ".join(notes) or None)


def bootstrap_ci(per_unit_differences: Mapping[str, float] | Sequence[float], confidence: float = CONFIDENCE,
                 resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> BootstrapInterval:
    """Percentile bootstrap interval of the mean difference, resampling units (speakers)
    with replacement; the same seed gives the same interval."""
    if isinstance(per_unit_differences, Mapping):
        units = sorted(per_unit_differences)
        values = np.asarray([float(per_unit_differences[u]) for u in units], dtype=np.float64)
    else:
        values = np.asarray(per_unit_differences, dtype=np.float64)
        units = [str(i) for i in range(len(values))]
    n = len(values)
    base = {"n": n, "units": units, "values": values.tolist(), "confidence": confidence, "resamples": resamples, "seed": seed}
    if n == 0:
        return BootstrapInterval(**base, note="no units to resample")
    mean = float(values.mean())
    if n < MIN_PAIRS:
        return BootstrapInterval(**base, mean=mean, note=f"{n} unit: a bootstrap needs at least {MIN_PAIRS} to resample")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a degenerate distribution (all values equal)
        result = sp_stats.bootstrap((values,), np.mean, n_resamples=resamples, confidence_level=confidence,
                                    method="percentile", rng=np.random.default_rng(seed))
    interval = result.confidence_interval
    return BootstrapInterval(**base, mean=mean, ci_low=_finite(interval.low), ci_high=_finite(interval.high))


def significant(p: float | None, alpha: float = ALPHA) -> bool | None:
    """p < alpha; None when there is no p-value."""
    return None if p is None else bool(p < alpha)
