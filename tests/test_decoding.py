"""Nested-CV decoding and its nulls on planted spaces whose answer is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from emolib.decoding import decode_layers, gram, kfold, nested_ridge_predictions, paired_difference
from emolib.geometry_study import (choose_headline_layer, family_contrast, pc_covariate_r, pc_rating_r,
                                   regress_out)

N, D, L = 80, 40, 5
PLANT = 3


def planted_layers(seed=0, *, plant=PLANT, strength=1.0):
    """``[L, N, D]`` noise; at layer ``plant`` valence lies on the 2nd-largest axis (a bigger nuisance axis is PC1)."""
    rng = np.random.default_rng(seed)
    valence, arousal = rng.uniform(1, 9, N), rng.uniform(1, 9, N)
    layers = rng.standard_normal((L, N, D)) * 0.5
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    nuisance = rng.standard_normal(N) * 6
    layers[plant] += np.outer(nuisance, q[:, 0]) + strength * np.outer(valence - 5, q[:, 1])
    return layers, np.column_stack([valence, arousal])


def test_planted_axis_found_at_its_layer_and_pc_rank():
    layers, y = planted_layers()
    st = decode_layers(np.stack([gram(v) for v in layers]), y, layers=list(range(L)), scales=["valence", "arousal"],
                       n_perm=200, seed=0)
    assert int(np.argmax(st.r[:, 0])) == PLANT
    assert st.r[PLANT, 0] > 0.9 and st.p(PLANT, "valence") < 0.01 and st.corrected_p(PLANT, "valence") < 0.01
    assert st.max_over_layers_p("valence") < 0.01
    assert np.delete(st.r[:, 0], PLANT).max() < 0.4
    assert int(np.argmax(st.pc_r[PLANT, :, 0])) == 1 and st.pc_r[PLANT, 1, 0] > 0.9   # PC2, not PC1
    assert st.pc_r[PLANT, 0, 0] < 0.4
    lo, hi = st.ci(PLANT, "valence", n_boot=500)
    assert lo < st.r[PLANT, 0] < hi and lo > 0.8
    # arousal was never planted
    assert st.p(PLANT, "arousal") > 0.05 and st.max_over_layers_p("arousal") > 0.05
    head = choose_headline_layer(layers, list(range(N)), y, layers=list(range(L)), seed=0)
    assert head.layer == PLANT and not set(head.selection) & set(head.report)
    assert len(head.selection) + len(head.report) == N


def test_shuffled_ratings_decode_to_nothing():
    layers, y = planted_layers()
    rng = np.random.default_rng(3)
    shuffled = y[rng.permutation(N)]
    st = decode_layers(gram(layers[PLANT])[None], shuffled, layers=[PLANT], scales=["valence", "arousal"],
                       n_perm=1000, seed=0)
    assert abs(st.r[0, 0]) < 0.3 and st.p(PLANT, "valence") > 0.05
    assert st.p(PLANT, "valence") >= 1 / 1001   # p floor is below any correction threshold
    assert st.null.shape == (1, 2, 1000)


def test_nested_cv_never_sees_the_held_out_rating():
    layers, y = planted_layers()
    G = gram(layers[PLANT])
    base, _ = nested_ridge_predictions(G, y[:, 0], k_outer=10, k_inner=5, seed=0)
    for i in (0, 17, 55):
        moved = y[:, 0].copy()
        moved[i] = 1e6   # a leak of emotion i's own rating would move its prediction enormously
        pred, _ = nested_ridge_predictions(G, moved, k_outer=10, k_inner=5, seed=0)
        assert pred[i, 0] == pytest.approx(base[i, 0], abs=1e-8)
        # ... while the other emotions' predictions do use it (the test is not vacuous)
        assert np.abs(np.delete(pred[:, 0] - base[:, 0], i)).max() > 1.0


def test_folds_partition_and_ridge_matches_closed_form():
    rng = np.random.default_rng(0)
    folds = kfold(23, 5, rng)
    assert sorted(np.concatenate(folds).tolist()) == list(range(23))
    # the dual solution equals primal ridge with an intercept for a single fixed penalty
    from emolib.decoding import _predict_all_alphas
    x = rng.standard_normal((30, 6))
    yv = rng.standard_normal(30)
    train, test = np.arange(20), np.arange(20, 30)
    p = _predict_all_alphas(x @ x.T, train, test, yv[:, None], (0.1,))[0, :, 0]
    xc = x[train] - x[train].mean(0)
    s = np.linalg.eigvalsh(xc @ xc.T).clip(0).mean()
    w = np.linalg.solve(xc.T @ xc + 0.1 * s * np.eye(6), xc.T @ (yv[train] - yv[train].mean()))
    np.testing.assert_allclose(p, (x[test] - x[train].mean(0)) @ w + yv[train].mean(), atol=1e-8)


def test_max_over_layers_is_calibrated_on_noise():
    hits_max, hits_single = [], []
    for s in range(200):  # 200 noise datasets x 99 permutations: the rate is 5% +- 1.5%
        rng = np.random.default_rng(1000 + s)
        n, d, n_layers = 16, 6, 3
        grams = np.stack([gram(rng.standard_normal((n, d))) for _ in range(n_layers)])
        st = decode_layers(grams, rng.standard_normal((n, 1)), layers=list(range(n_layers)), scales=["valence"],
                           n_perm=99, n_pcs=1, k_outer=4, k_inner=2, seed=s)
        hits_max.append(st.max_over_layers_p("valence") <= 0.05)
        best = st.layers[int(np.argmax(st.r[:, 0]))]
        hits_single.append(st.p(best, "valence") <= 0.05)   # uncorrected best layer: inflated
    rate = np.mean(hits_max)
    assert 0.01 <= rate <= 0.10, rate
    assert np.mean(hits_single) > rate


def test_paired_difference():
    rng = np.random.default_rng(0)
    y = rng.standard_normal(100)
    good, bad = y + 0.3 * rng.standard_normal(100), rng.standard_normal(100)
    same = paired_difference(good, good, y, n_boot=500)
    assert same["diff"] == 0 and same["ci"] == [0, 0] and same["p"] == 1
    d = paired_difference(good, bad, y, n_boot=500)
    assert d["diff"] > 0.5 and d["ci"][0] > 0.3 and d["p"] < 0.01


def test_style_pc_is_named_and_regressed_out():
    rng = np.random.default_rng(0)
    style = pd.DataFrame({"first_person": rng.uniform(0, 1, N), "words": rng.normal(200, 20, N)})
    valence = rng.uniform(1, 9, N)
    q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    z = (style.first_person - 0.5).to_numpy() * 20
    v = np.outer(z, q[:, 0]) + 0.5 * np.outer(valence - 5, q[:, 1]) + 0.1 * rng.standard_normal((N, D))
    r = pc_covariate_r(v, style)
    assert abs(r.loc["PC1", "first_person"]) > 0.95 and abs(r.loc["PC1", "words"]) < 0.3
    y = np.column_stack([valence, valence])
    assert pc_rating_r(v, y)[0, 0] < 0.3
    assert pc_rating_r(regress_out(v, style), y)[0, 0] > 0.95   # valence becomes PC1 once style is removed


def test_family_contrast():
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((4, D)) * 3
    fams = [f"f{i % 4}" for i in range(40)]
    v = centers[[i % 4 for i in range(40)]] + rng.standard_normal((40, D))
    res = family_contrast(v, fams, n_perm=500)
    assert res["within"] > res["between"] and res["p"] < 0.01
    res0 = family_contrast(rng.standard_normal((40, D)), fams, n_perm=500)
    assert res0["p"] > 0.01 and abs(res0["diff"]) < 0.1


def _fake_corpus(n_emotions=6, per=5, d=12, n_layers=2, seed=0):
    import torch

    from emolib.data import Story
    from emolib.pipeline import CorpusActivations

    rng = np.random.default_rng(seed)
    emotions = [f"e{i}" for i in range(n_emotions)]
    stories = [Story(f"{e}-{k:02d}", e, "train", f"batch-{e}", "t", "first", "x") for e in emotions
               for k in range(1, per + 1)]
    centers = rng.standard_normal((n_emotions, n_layers, d)) * 3
    acts = torch.tensor(np.repeat(centers, per, 0) + rng.standard_normal((len(stories), n_layers, d)), dtype=torch.float32)
    neutral = torch.tensor(rng.standard_normal((30, n_layers, d)) * np.linspace(3, 0.1, d), dtype=torch.float32)
    return CorpusActivations(emotions, stories, acts, neutral, tuple(range(n_layers)), None, None, "h")


def test_shuffled_label_spaces_are_denoised_like_the_real_vectors():
    from emolib.extraction import neutral_components
    from emolib.geometry_study import shuffled_label_spaces
    from emolib.pipeline import fit_vectors

    ca = _fake_corpus()
    sh = shuffled_label_spaces(ca, 1, n=4, variance=0.5, seed=0)
    assert sh.shape == (4, 6, 12)
    comps = neutral_components(ca.neutral_acts[:, [1]], variance=0.5)[0]
    assert float((sh @ comps.T).abs().max()) < 1e-4               # the neutral span is removed
    assert float(sh.sum(1).abs().max()) < 1e-3                    # centred over emotions
    real = fit_vectors(ca, splits=("fit", "val"), variance=0.5).at(1)
    # shuffling destroys the emotion structure, so shuffled vectors are much shorter than the real ones
    assert sh.norm(dim=-1).mean() < 0.5 * real.norm(dim=-1).mean()
    again = shuffled_label_spaces(ca, 1, n=4, variance=0.5, seed=0)
    assert torch_equal(sh, again)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_variance_sweep_reports_classification_and_decoding():
    from emolib.geometry_study import variance_sweep

    ca = _fake_corpus(n_emotions=8, per=10)
    y = np.column_stack([np.arange(8.0), np.arange(8.0)[::-1]])
    t = variance_sweep(ca, 1, list(range(8)), y, variances=(0.0, 0.5, 0.9), seed=0)
    assert list(t.variance) == [0.0, 0.5, 0.9]
    assert t.n_components.iloc[0] == 0 and t.n_components.is_monotonic_increasing
    assert t.val_top1.between(0, 1).all() and t.val_top1.iloc[0] > 0.5   # planted centres are recognisable
    assert t[["valence_cv_r", "arousal_cv_r"]].abs().le(1).all().all()
