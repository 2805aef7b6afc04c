"""The geometry of emotion vectors: similarity, clusters, principal axes, and agreement across spaces.

Pure functions on ``[n_emotions, d]`` arrays; nothing here knows about models.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import leaves_list, linkage
from scipy.spatial.distance import squareform
from scipy.stats import spearmanr

from emolib.stats import correlation

__all__ = ["cosine_matrix", "cluster_order", "kmeans_clusters", "pca", "orient", "pc_rating_correlations",
           "rsa", "rsa_by_layer", "affect_summary"]


def _as_np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=float)


def cosine_matrix(vectors) -> np.ndarray:
    """``[E, d]`` -> ``[E, E]`` cosine similarities."""
    v = _as_np(vectors)
    unit = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
    return unit @ unit.T


def cluster_order(sim: np.ndarray) -> np.ndarray:
    """Leaf order of average-linkage hierarchical clustering on ``1 - similarity``."""
    dist = np.clip(1 - sim, 0, None)
    np.fill_diagonal(dist, 0)
    return leaves_list(linkage(squareform(dist, checks=False), method="average"))


def kmeans_clusters(vectors, names: list[str], *, k: int = 10, seed: int = 0) -> dict[int, list[str]]:
    """k-means on unit vectors (so it clusters by direction); clusters ordered by size."""
    from sklearn.cluster import KMeans

    v = _as_np(vectors)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(unit)
    groups: dict[int, list[str]] = {}
    for lab, n in zip(labels, names):
        groups.setdefault(int(lab), []).append(n)
    ordered = sorted(groups.values(), key=len, reverse=True)
    return {i: g for i, g in enumerate(ordered)}


def pca(vectors, *, n_components: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows (centred): ``scores [E, k]``, ``components [k, d]``, ``explained_ratio [k]``.

    Sign convention: each component is oriented so that the emotion with the largest absolute
    score scores positively (deterministic; use :func:`orient` to align with an external scale).
    """
    v = _as_np(vectors)
    v = v - v.mean(0)
    u, s, vt = np.linalg.svd(v, full_matrices=False)
    k = min(n_components, len(s))
    scores = u[:, :k] * s[:k]
    comps = vt[:k]
    for j in range(k):
        if scores[np.argmax(np.abs(scores[:, j])), j] < 0:
            scores[:, j] *= -1
            comps[j] *= -1
    return scores, comps, (s ** 2 / (s ** 2).sum())[:k]


def orient(scores: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flip a score column so it correlates non-negatively with ``reference`` (PCA signs are arbitrary)."""
    return scores if np.corrcoef(scores, reference)[0, 1] >= 0 else -scores


def pc_rating_correlations(scores: np.ndarray, names: list[str], ratings: pd.DataFrame, *, n_pcs: int = 3,
                           n_boot: int = 2000, n_perm: int = 10000, seed: int = 0) -> pd.DataFrame:
    """Pearson and Spearman r of PC1..n with human valence and arousal, over the rated emotions.

    Each PC is oriented to correlate positively with the scale it is compared with, so ``r`` reads as
    the strength of the alignment; the permutation p-value is two-sided and unaffected by the flip.
    """
    idx = [names.index(e) for e in ratings.index if e in names]
    rated = [e for e in ratings.index if e in names]
    rows = []
    for j in range(min(n_pcs, scores.shape[1])):
        for scale in ("valence", "arousal"):
            y = ratings.loc[rated, scale].to_numpy()
            x = orient(scores[idx, j], y)
            for method in ("pearson", "spearman"):
                c = correlation(x, y, method=method, n_boot=n_boot, n_perm=n_perm, seed=seed)
                rows.append({"pc": j + 1, "scale": scale, "method": method, "r": c["r"], "ci_lo": c["ci"][0],
                             "ci_hi": c["ci"][1], "p": c["p"], "n": c["n"]})
    return pd.DataFrame(rows)


def rsa(sim_a: np.ndarray, sim_b: np.ndarray) -> float:
    """Spearman correlation of the upper triangles of two similarity matrices over the same items."""
    if sim_a.shape != sim_b.shape:
        raise ValueError(f"similarity matrices differ in shape: {sim_a.shape} vs {sim_b.shape}")
    iu = np.triu_indices_from(sim_a, k=1)
    return float(spearmanr(sim_a[iu], sim_b[iu])[0])


def rsa_by_layer(vectors_by_layer) -> np.ndarray:
    """``[L, E, d]`` -> ``[L, L]`` RSA between every pair of layers."""
    sims = [cosine_matrix(v) for v in vectors_by_layer]
    n = len(sims)
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = rsa(sims[i], sims[j])
    return out


def affect_summary(vectors, names: list[str], ratings: pd.DataFrame, *, n_boot: int = 2000, n_perm: int = 10000,
                   seed: int = 0) -> dict:
    """The headline numbers for one space: PC variance, PC1-valence and the best arousal PC."""
    scores, _, ratio = pca(vectors)
    table = pc_rating_correlations(scores, names, ratings, n_boot=n_boot, n_perm=n_perm, seed=seed)
    pear = table[table.method == "pearson"]
    v1 = pear[(pear.pc == 1) & (pear.scale == "valence")].iloc[0]
    ar = pear[(pear.scale == "arousal") & (pear.pc.isin([2, 3]))].sort_values("r", ascending=False).iloc[0]
    return {"pc_variance": [float(x) for x in ratio[:5]],
            "pc1_valence_r": float(v1.r), "pc1_valence_ci": [float(v1.ci_lo), float(v1.ci_hi)],
            "pc1_valence_p": float(v1.p), "arousal_best_pc": int(ar.pc), "arousal_r": float(ar.r),
            "arousal_ci": [float(ar.ci_lo), float(ar.ci_hi)], "arousal_p": float(ar.p),
            "n_rated_emotions": int(v1.n), "table": table}
