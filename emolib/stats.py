"""Small, seeded statistics used throughout the book: bootstrap intervals and permutation tests."""

from __future__ import annotations

import numpy as np
from scipy import stats as _st

__all__ = ["bootstrap_ci", "bootstrap_mean_ci", "correlation", "permutation_pvalue"]


def bootstrap_ci(values: np.ndarray, statistic=np.mean, *, n_boot: int = 2000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over the rows of ``values``."""
    values = np.asarray(values)
    if len(values) == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.array([statistic(values[i]) for i in idx])
    alpha = (1 - level) / 2
    return float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))


def bootstrap_mean_ci(values, *, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Fast percentile bootstrap interval of the mean (vectorised)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def _corr(x, y, method):
    if method == "pearson":
        return _st.pearsonr(x, y)[0]
    if method == "spearman":
        return _st.spearmanr(x, y)[0]
    raise ValueError(f"unknown correlation method {method!r}; use 'pearson' or 'spearman'")


def permutation_pvalue(x, y, *, method: str = "pearson", n_perm: int = 10000, seed: int = 0) -> float:
    """Two-sided permutation p-value of the correlation of ``x`` and ``y`` (add-one corrected)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    observed = abs(_corr(x, y, method))
    rng = np.random.default_rng(seed)
    if method == "spearman":
        x, y = _st.rankdata(x), _st.rankdata(y)
    xc = (x - x.mean()) / (x.std() or 1.0)
    perms = np.array([rng.permutation(y) for _ in range(n_perm)])
    pc = (perms - perms.mean(1, keepdims=True)) / (perms.std(1, keepdims=True) + 1e-12)
    null = np.abs((pc * xc).mean(1))
    return float((1 + np.sum(null >= observed - 1e-12)) / (n_perm + 1))


def _corr_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x`` and ``y`` (``[B, n]``), vectorised."""
    xc = x - x.mean(1, keepdims=True)
    yc = y - y.mean(1, keepdims=True)
    den = np.sqrt((xc ** 2).sum(1) * (yc ** 2).sum(1))
    return np.where(den > 0, (xc * yc).sum(1) / np.where(den > 0, den, 1), 0.0)


def correlation(x, y, *, method: str = "pearson", n_boot: int = 2000, n_perm: int = 10000,
                seed: int = 0, level: float = 0.95) -> dict:
    """Correlation with a percentile bootstrap CI (over paired items) and a permutation p-value."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D of equal length, got {x.shape} and {y.shape}")
    if len(x) < 4:
        raise ValueError("a correlation needs at least 4 paired values")
    r = float(_corr(x, y, method))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    bx, by = x[idx], y[idx]
    if method == "spearman":
        bx, by = _st.rankdata(bx, axis=1), _st.rankdata(by, axis=1)
    boots = _corr_rows(bx, by)
    alpha = (1 - level) / 2
    lo, hi = float(np.quantile(boots, alpha)), float(np.quantile(boots, 1 - alpha))
    return {"r": r, "ci": [lo, hi], "p": permutation_pvalue(x, y, method=method, n_perm=n_perm, seed=seed),
            "n": int(len(x)), "method": method}
