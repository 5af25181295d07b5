"""Paired comparisons against scipy and hand computation on hand-made numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp_stats

from emogen.evaluation.stats import bootstrap_ci, paired_comparison, significant

CONDITION = {0: 0.52, 1: 0.47, 2: 0.55, 3: 0.50, 4: 0.49}
REFERENCE = {0: 0.47, 1: 0.50, 2: 0.51, 3: 0.46, 4: 0.45}


def test_mean_interval_and_p_values_match_scipy_and_the_t_formula():
    result = paired_comparison(CONDITION, REFERENCE)
    d = np.array([CONDITION[k] - REFERENCE[k] for k in sorted(CONDITION)])
    assert result.n == 5 and result.pairs == ["0", "1", "2", "3", "4"]
    assert result.differences == pytest.approx(d.tolist())
    assert result.mean == pytest.approx(d.mean())
    half = sp_stats.t.ppf(0.975, df=4) * d.std(ddof=1) / math.sqrt(5)  # the paired t interval by hand
    assert (result.ci_low, result.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert result.t_p == pytest.approx(sp_stats.ttest_rel([CONDITION[k] for k in range(5)], [REFERENCE[k] for k in range(5)]).pvalue)
    assert result.wilcoxon_p == pytest.approx(sp_stats.wilcoxon(d).pvalue)
    assert result.note is None


def test_pairs_by_shared_key_only():
    """A key missing on one side is no pair; tuple keys ((fold, seed)) pair the same way."""
    result = paired_comparison({(0, 0): 0.6, (0, 1): 0.5, (1, 0): 0.7}, {(0, 0): 0.5, (1, 0): 0.4, (2, 0): 0.9})
    assert result.n == 2 and result.pairs == ["(0, 0)", "(1, 0)"]
    assert result.differences == pytest.approx([0.1, 0.3])


def test_wilcoxon_with_zeros_and_ties_is_scipys():
    # binary fractions, so the tied differences are exactly equal
    values = {0: 0.5, 1: 0.625, 2: 0.625, 3: 0.375, 4: 0.75, 5: 0.5625, 6: 0.6875}
    reference = {k: 0.5 for k in values}  # one zero difference, tied |0.125|s
    d = np.array([values[k] - reference[k] for k in range(7)])
    result = paired_comparison(values, reference)
    assert result.wilcoxon_p == pytest.approx(sp_stats.wilcoxon(d).pvalue)
    assert result.wilcoxon_p == pytest.approx(sp_stats.wilcoxon(d[d != 0]).pvalue)  # scipy's default drops the zero


@pytest.mark.parametrize("n", [0, 1])
def test_too_few_pairs_give_none_and_say_why(n):
    result = paired_comparison({k: 0.6 for k in range(n)}, {k: 0.5 for k in range(n)})
    assert result.n == n and result.ci_low is None and result.ci_high is None and result.t_p is None and result.wilcoxon_p is None
    assert result.mean == (pytest.approx(0.1) if n else None)
    assert "pair" in result.note


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # scipy's Wilcoxon on all-zero input
@pytest.mark.parametrize("difference", [0.0, 0.125])
def test_equal_differences_give_no_t_test(difference):
    """scipy says p = 0 for equal non-zero differences; that is no evidence, so None."""
    result = paired_comparison({k: 0.5 + difference for k in range(3)}, {k: 0.5 for k in range(3)})
    assert result.mean == difference and result.t_p is None and result.ci_low is None and "no spread" in result.note
    assert result.wilcoxon_p == pytest.approx(sp_stats.wilcoxon(np.full(3, difference)).pvalue)
    for value in (result.ci_low, result.ci_high, result.wilcoxon_p):
        assert value is None or math.isfinite(value)
    assert "NaN" not in result.model_dump_json()


def test_bootstrap_is_deterministic_per_seed_and_covers_the_true_mean():
    true_mean = 0.03
    # spread symmetrically around the true mean, shuffled: the sample mean is the true one
    offsets = np.random.default_rng(7).permutation(np.linspace(-0.04, 0.04, 40))
    per_speaker = {f"spk{i:02d}": float(true_mean + v) for i, v in enumerate(offsets)}
    first, again, other = bootstrap_ci(per_speaker, seed=1), bootstrap_ci(per_speaker, seed=1), bootstrap_ci(per_speaker, seed=2)
    assert (first.ci_low, first.ci_high) == (again.ci_low, again.ci_high)
    assert (first.ci_low, first.ci_high) != (other.ci_low, other.ci_high)
    assert first.ci_low < true_mean < first.ci_high
    assert first.ci_low < first.mean < first.ci_high and first.n == 40 and first.units[0] == "spk00"
    values = np.asarray(list(per_speaker.values()))
    reference = sp_stats.bootstrap((values,), np.mean, method="percentile", rng=np.random.default_rng(1))
    assert (first.ci_low, first.ci_high) == pytest.approx(tuple(reference.confidence_interval))


def test_bootstrap_with_one_speaker_says_why():
    result = bootstrap_ci({"03": 0.05})
    assert result.mean == pytest.approx(0.05) and result.ci_low is None and "at least 2" in result.note


@pytest.mark.parametrize(("p", "expected"), [(0.049, True), (0.05, False), (0.3, False), (None, None)])
def test_significant(p, expected):
    assert significant(p) is expected
