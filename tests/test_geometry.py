"""Geometry functions on synthetic emotion spaces whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emolib.geometry import (affect_summary, cluster_order, cosine_matrix, kmeans_clusters, pca,
                             pc_rating_correlations, rsa, rsa_by_layer)

N, D = 60, 48


def planted_space(seed=0, noise=0.1):
    """Vectors = valence * a1 + 0.6 * arousal * a2 + noise, with a1 and a2 orthonormal."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    valence, arousal = rng.uniform(1, 9, N), rng.uniform(1, 9, N)
    vecs = np.outer(valence - 5, q[:, 0]) + 0.6 * np.outer(arousal - 5, q[:, 1]) + noise * rng.standard_normal((N, D))
    names = [f"e{i}" for i in range(N)]
    ratings = pd.DataFrame({"valence": valence, "arousal": arousal}, index=names)
    return vecs, names, ratings


def test_planted_axes_are_recovered():
    vecs, names, ratings = planted_space()
    s = affect_summary(vecs, names, ratings, n_boot=300, n_perm=500)
    assert s["pc1_valence_r"] > 0.98 and s["pc1_valence_p"] < 0.01 and s["pc1_valence_ci"][0] > 0.95
    assert s["arousal_best_pc"] == 2 and s["arousal_r"] > 0.98
    assert s["pc_variance"][0] > s["pc_variance"][1] > s["pc_variance"][2]
    assert s["n_rated_emotions"] == N


def test_shuffled_ratings_give_no_alignment():
    vecs, names, ratings = planted_space()
    rng = np.random.default_rng(5)
    shuffled = ratings.copy()
    shuffled["valence"] = rng.permutation(shuffled["valence"].to_numpy())
    t = pc_rating_correlations(pca(vecs)[0], names, shuffled, n_boot=300, n_perm=1000)
    row = t[(t.pc == 1) & (t.scale == "valence") & (t.method == "pearson")].iloc[0]
    # oriented r is non-negative by construction, but small and not significant
    assert row.r < 0.35 and row.p > 0.05


def test_pca_sign_convention_is_deterministic():
    vecs, *_ = planted_space()
    a, _, _ = pca(vecs)
    b, _, _ = pca(-vecs)
    np.testing.assert_allclose(a[:, :3], b[:, :3], atol=1e-9)
    for j in range(3):
        assert a[np.argmax(np.abs(a[:, j])), j] > 0


def test_cosine_cluster_and_kmeans_group_planted_clusters():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((3, D)) * 5
    vecs = np.repeat(centers, 10, axis=0) + 0.1 * rng.standard_normal((30, D))
    names = [f"c{i // 10}-{i}" for i in range(30)]
    sim = cosine_matrix(vecs)
    assert np.allclose(np.diag(sim), 1)
    order = cluster_order(sim)
    groups = [names[i].split("-")[0] for i in order]
    assert sum(a != b for a, b in zip(groups, groups[1:])) == 2  # three contiguous blocks
    clusters = kmeans_clusters(vecs, names, k=3)
    assert sorted(len(v) for v in clusters.values()) == [10, 10, 10]
    assert all(len({n.split("-")[0] for n in v}) == 1 for v in clusters.values())


def test_rsa():
    vecs, *_ = planted_space()
    s = cosine_matrix(vecs)
    assert rsa(s, s) == pytest.approx(1.0)
    other, *_ = planted_space(seed=9)
    assert abs(rsa(s, cosine_matrix(other))) < 0.3
    m = rsa_by_layer(np.stack([vecs, vecs + 0.01, other]))
    assert m.shape == (3, 3) and m[0, 1] > 0.99 and abs(m[0, 2]) < 0.3
    with pytest.raises(ValueError, match="differ in shape"):
        rsa(s, s[:5, :5])
