"""Statistics helpers on data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from emolib.stats import bootstrap_mean_ci, correlation, permutation_pvalue


def test_correlated_data_gives_high_r_small_p_and_tight_ci():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(60)
    y = x + 0.2 * rng.standard_normal(60)
    res = correlation(x, y, n_perm=2000)
    assert res["r"] > 0.95 and res["p"] < 0.001
    assert res["ci"][0] > 0.9 and res["ci"][0] <= res["r"] <= res["ci"][1]


def test_shuffled_data_gives_r_near_zero_and_large_p():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(80)
    y = rng.permutation(x)
    res = correlation(x, y, method="spearman", n_perm=2000)
    assert abs(res["r"]) < 0.3 and res["p"] > 0.05 and res["ci"][0] < 0 < res["ci"][1]


def test_permutation_p_is_seeded_and_bounded():
    x = np.arange(10.0)
    y = np.arange(10.0) ** 2
    p1 = permutation_pvalue(x, y, n_perm=500, seed=3)
    assert p1 == permutation_pvalue(x, y, n_perm=500, seed=3)
    assert 1 / 501 <= p1 < 0.01


def test_bootstrap_mean_ci_covers_the_mean():
    v = np.r_[np.ones(30), np.zeros(70)]
    lo, hi = bootstrap_mean_ci(v)
    assert lo < 0.3 < hi and hi - lo < 0.25


def test_bad_input():
    with pytest.raises(ValueError, match="at least 4"):
        correlation([1, 2, 3], [1, 2, 3])
    with pytest.raises(ValueError, match="equal length"):
        correlation([1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="unknown correlation"):
        correlation([1, 2, 3, 4], [1, 2, 3, 5], method="kendall")
