"""Cross-validated linear decoding of human ratings from an emotion space, with nulls that respect the search.

Ridge regression is solved in its dual (kernel) form on the Gram matrix ``G = X X^T`` of the emotion
vectors, so its cost does not depend on ``d_model`` and one eigendecomposition per training set serves
every penalty and every permuted copy of the ratings at once (the permutations are extra columns of
``Y``). That is what makes >= 1,000 permutations over every layer a matter of seconds.

Nested cross-validation: the outer K folds split the *emotions*; inside each outer training set an
inner K-fold picks the penalty (separately for every column of ``Y``, so every permuted copy goes
through exactly the analysis the real ratings do). Neither the penalty nor the fit ever sees a rating
of an outer-test emotion. The statistic is Pearson r between the out-of-fold predictions and the
ratings over all emotions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from emolib.stats import _corr_rows

__all__ = ["ALPHAS", "gram", "kfold", "nested_ridge_predictions", "DecodingByLayer", "decode_layers",
           "decode_space", "bootstrap_r_ci", "paired_difference"]

# Penalties relative to the mean eigenvalue of the training kernel (scale-free across spaces).
ALPHAS = tuple(float(a) for a in 10.0 ** np.arange(-3.0, 3.5, 0.5))


def gram(vectors) -> np.ndarray:
    """``[E, d]`` -> ``[E, E]`` float64 Gram matrix (activations may arrive in bfloat16)."""
    x = vectors.detach().cpu().double().numpy() if hasattr(vectors, "detach") else np.asarray(vectors, float)
    return x @ x.T


def kfold(n: int, k: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``k`` disjoint test-index arrays covering ``range(n)`` (shuffled; sizes differ by at most one)."""
    if n < 2:
        raise ValueError(f"cross-validation needs at least 2 items, got {n}")
    k = max(2, min(k, n))
    return [np.sort(f) for f in np.array_split(rng.permutation(n), k)]


def _predict_all_alphas(G: np.ndarray, train: np.ndarray, test: np.ndarray, Y: np.ndarray,
                        alphas: tuple[float, ...]) -> np.ndarray:
    """Ridge predictions ``[n_alpha, n_test, c]`` for the ``test`` rows from a fit on ``train`` rows only.

    Both the features (through the kernel) and the targets are centred on the training rows, i.e. the
    ridge has an unpenalised intercept. ``Y [n, c]``: only ``Y[train]`` is read.
    """
    gtt = G[np.ix_(train, train)]
    gst = G[np.ix_(test, train)]
    row = gtt.mean(1)
    m = row.mean()
    ktt = gtt - row[:, None] - row[None, :] + m          # [n_tr, n_tr] centred kernel
    kst = gst - gst.mean(1)[:, None] - row[None, :] + m  # [n_te, n_tr]
    s, U = np.linalg.eigh(ktt)
    s = np.clip(s, 0.0, None)
    scale = s.mean() if s.mean() > 0 else 1.0
    yt = Y[train]
    ymu = yt.mean(0)
    uty = U.T @ (yt - ymu)                                 # [n_tr, c]
    ku = kst @ U                                           # [n_te, n_tr]
    out = np.empty((len(alphas), len(test), Y.shape[1]))
    for i, a in enumerate(alphas):
        out[i] = ku @ (uty / (s + a * scale)[:, None]) + ymu
    return out


def nested_ridge_predictions(G: np.ndarray, Y: np.ndarray, *, k_outer: int = 10, k_inner: int = 5,
                             alphas: tuple[float, ...] = ALPHAS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold predictions ``[n, c]`` of every column of ``Y [n, c]`` and the chosen penalty
    index ``[k_outer, c]``. Folds depend only on ``n`` and ``seed``, so spaces compared with the same
    seed are scored on identical folds (needed for paired comparisons)."""
    Y = np.asarray(Y, float)
    if Y.ndim == 1:
        Y = Y[:, None]
    n = len(Y)
    if G.shape != (n, n):
        raise ValueError(f"Gram matrix {G.shape} does not match {n} targets")
    rng = np.random.default_rng(seed)
    pred = np.empty_like(Y)
    chosen = []
    everyone = np.arange(n)
    for test in kfold(n, k_outer, rng):
        train = np.setdiff1d(everyone, test)
        err = np.zeros((len(alphas), Y.shape[1]))
        for inner_test_pos in kfold(len(train), k_inner, rng):
            inner_test = train[inner_test_pos]
            inner_train = np.setdiff1d(train, inner_test)
            p = _predict_all_alphas(G, inner_train, inner_test, Y, alphas)
            err += ((p - Y[inner_test][None]) ** 2).sum(1)
        best = err.argmin(0)                                                  # [c]
        p = _predict_all_alphas(G, train, test, Y, alphas)                     # [A, n_te, c]
        pred[test] = np.take_along_axis(p, best[None, None, :], 0)[0]
        chosen.append(best)
    return pred, np.stack(chosen)


def bootstrap_r_ci(pred: np.ndarray, y: np.ndarray, *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> tuple[float, float]:
    """Percentile CI of r(pred, y) when the emotions are resampled (predictions held fixed)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    boots = _corr_rows(pred[idx], y[idx])
    a = (1 - level) / 2
    return float(np.quantile(boots, a)), float(np.quantile(boots, 1 - a))


def paired_difference(pred_a: np.ndarray, pred_b: np.ndarray, y: np.ndarray, *, n_boot: int = 2000,
                      seed: int = 0) -> dict:
    """r(a) - r(b) with a paired bootstrap over emotions (both resampled with the same indices) and
    a two-sided bootstrap p for the difference being zero."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), size=(n_boot, len(y)))
    d = _corr_rows(pred_a[idx], y[idx]) - _corr_rows(pred_b[idx], y[idx])
    diff = float(np.corrcoef(pred_a, y)[0, 1] - np.corrcoef(pred_b, y)[0, 1])
    p = float(min(1.0, 2 * (1 + min((d <= 0).sum(), (d >= 0).sum())) / (n_boot + 1)))
    return {"diff": diff, "ci": [float(np.quantile(d, 0.025)), float(np.quantile(d, 0.975))], "p": p}


def _pc_abs_r(G: np.ndarray, Y: np.ndarray, n_pcs: int, rows: np.ndarray) -> np.ndarray:
    """|r| of PC1..n scores with every column of ``Y`` (``[len(rows), c]``): ``[n_pcs, c]``. The PCs are
    those of *all* items of the Gram matrix ``G``; only ``rows`` (the rated ones) are correlated."""
    n = len(G)
    c = np.eye(n) - 1.0 / n
    s, U = np.linalg.eigh(c @ G @ c)
    order = np.argsort(s)[::-1][:n_pcs]
    scores = (U[:, order] * np.sqrt(np.clip(s[order], 0, None)))[rows]   # [n_rows, n_pcs]
    out = np.empty((len(order), Y.shape[1]))
    for j in range(len(order)):
        out[j] = np.abs(_corr_rows(np.broadcast_to(scores[:, j], Y.T.shape), Y.T))
    return out


@dataclass
class DecodingByLayer:
    """Decoding of ``scales`` at each of ``layers`` with a shared permutation null.

    ``r [L, S]`` observed decoding r; ``null [L, S, P]`` the same statistic under the P permutations
    (the *same* permutation at every layer, so maxima over layers form the family-wise null);
    ``pred [L, n, S]`` out-of-fold predictions; ``pc_r [L, n_pcs, S]`` |r| of PC1..n with each scale and
    ``pc_null [L, n_pcs, S, P]``; ``y [n, S]`` the ratings.
    """

    layers: list[int]
    scales: list[str]
    r: np.ndarray
    null: np.ndarray
    pred: np.ndarray
    pc_r: np.ndarray
    pc_null: np.ndarray
    y: np.ndarray

    @property
    def n_perm(self) -> int:
        return self.null.shape[-1]

    def _s(self, scale: str) -> int:
        return self.scales.index(scale)

    def _l(self, layer: int) -> int:
        return self.layers.index(layer)

    def p(self, layer: int, scale: str) -> float:
        """One-sided permutation p of the decoding r at one layer (add-one corrected)."""
        li, si = self._l(layer), self._s(scale)
        return float((1 + np.sum(self.null[li, si] >= self.r[li, si] - 1e-12)) / (self.n_perm + 1))

    def corrected_p(self, layer: int, scale: str) -> float:
        """p of this layer's r against the null of the *maximum* r over all layers (search-corrected)."""
        li, si = self._l(layer), self._s(scale)
        mx = self.null[:, si].max(0)
        return float((1 + np.sum(mx >= self.r[li, si] - 1e-12)) / (self.n_perm + 1))

    def max_over_layers_p(self, scale: str) -> float:
        """Family-wise test of "some layer decodes ``scale``": max observed r vs max null r over layers."""
        si = self._s(scale)
        return float((1 + np.sum(self.null[:, si].max(0) >= self.r[:, si].max() - 1e-12)) / (self.n_perm + 1))

    def null_quantile(self, scale: str, q: float = 0.95) -> np.ndarray:
        """Per-layer quantile of the decoding null ``[L]`` (the figure's band)."""
        return np.quantile(self.null[:, self._s(scale)], q, axis=-1) if self.n_perm else np.full(len(self.layers), np.nan)

    def ci(self, layer: int, scale: str, *, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
        li, si = self._l(layer), self._s(scale)
        return bootstrap_r_ci(self.pred[li, :, si], self.y[:, si], n_boot=n_boot, seed=seed)


def decode_layers(grams: np.ndarray, y: np.ndarray, *, layers: list[int], scales: list[str], n_perm: int = 1000,
                  rows: list[int] | None = None, n_pcs: int = 3, k_outer: int = 10, k_inner: int = 5,
                  seed: int = 0) -> DecodingByLayer:
    """Nested-CV ridge decoding of each column of ``y [n, S]`` from each ``grams[l] [E, E]``.

    ``rows`` (default all): the ``n`` items of the Gram matrices that ``y`` rates, in ``y``'s order;
    decoding uses only them, while the PCs are computed over all ``E`` items (as the PCA readout does).
    The permutation null shuffles the ratings over emotions (one permutation shared by the scales and
    by the layers) and reruns the complete nested CV, penalty search included, on each shuffle.
    """
    grams = np.asarray(grams, float)
    y = np.asarray(y, float)
    if y.ndim == 1:
        y = y[:, None]
    n, S = y.shape
    rows = np.arange(grams.shape[1]) if rows is None else np.asarray(rows)
    if len(rows) != n:
        raise ValueError(f"{len(rows)} rows for {n} ratings")
    rng = np.random.default_rng(seed + 1)
    perms = np.stack([rng.permutation(n) for _ in range(n_perm)]) if n_perm else np.empty((0, n), int)
    # columns: [scale0, scale1, ..., scale0 under perm 0, scale1 under perm 0, ...]
    Y = np.concatenate([y] + [y[p] for p in perms], axis=1)   # [n, S * (P + 1)]
    rs, nulls, preds, pcs, pcnull = [], [], [], [], []
    for G in grams:
        pred, _ = nested_ridge_predictions(G[np.ix_(rows, rows)], Y, k_outer=k_outer, k_inner=k_inner, seed=seed)
        r = _corr_rows(pred.T, Y.T).reshape(n_perm + 1, S)    # [P + 1, S]
        rs.append(r[0])
        nulls.append(r[1:].T)
        preds.append(pred[:, :S])
        pr = _pc_abs_r(G, Y, n_pcs, rows).reshape(-1, n_perm + 1, S)   # [n_pcs, P + 1, S]
        pcs.append(pr[:, 0])
        pcnull.append(pr[:, 1:].transpose(0, 2, 1))
    return DecodingByLayer(list(layers), list(scales), np.stack(rs), np.stack(nulls), np.stack(preds),
                           np.stack(pcs), np.stack(pcnull), y)


def decode_space(vectors, y: np.ndarray, *, scales: list[str], rows: list[int] | None = None, n_perm: int = 1000,
                 seed: int = 0, k_outer: int = 10, k_inner: int = 5) -> DecodingByLayer:
    """:func:`decode_layers` for one space ``[E, d]`` (reported as layer 0)."""
    return decode_layers(gram(vectors)[None], y, layers=[0], scales=scales, rows=rows, n_perm=n_perm, seed=seed,
                         k_outer=k_outer, k_inner=k_inner)
