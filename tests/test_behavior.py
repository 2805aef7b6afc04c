"""Chapter-5 statistics on planted data (answer known) and null data (no answer)."""

from __future__ import annotations

import numpy as np
import pytest

from emolib import behavior
from emolib.readouts import OrderScores, Readout


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _letter_scores(beta, gamma, pairs, rng=None, noise=0.0):
    """Per-order letter logits for a model with strengths ``beta`` and an (A) bias ``gamma`` (logits)."""
    l1 = np.array([beta[i] - beta[j] + gamma for i, j in pairs])   # i shown as (A)
    l2 = np.array([beta[j] - beta[i] + gamma for i, j in pairs])   # j shown as (A)
    if noise:
        l1, l2 = l1 + rng.normal(0, noise, len(l1)), l2 + rng.normal(0, noise, len(l2))
    return OrderScores(Readout.LETTER, l1, -l2, letter_logit=np.stack([l1, l2]), mass=np.ones((2, len(l1))))


def test_bradley_terry_recovers_strengths_and_position():
    rng = np.random.default_rng(0)
    beta = rng.normal(0, 1, 12)
    pairs = behavior.preference_pairs(12, per_item=4, seed=1)
    fit = behavior.elo_with_ci(12, pairs, _letter_scores(beta, 0.8, pairs), n_boot=30)
    want = (beta - beta.mean()) * behavior.ELO_PER_LOGIT
    np.testing.assert_allclose(fit["elo"], want, atol=5)
    assert fit["position"] == pytest.approx(0.8 * behavior.ELO_PER_LOGIT, abs=5)


def test_a_pure_letter_bias_gives_no_preference():
    pairs = behavior.preference_pairs(10, per_item=3, seed=0)
    fit = behavior.elo_with_ci(10, pairs, _letter_scores(np.zeros(10), 2.0, pairs), n_boot=20)
    assert np.abs(fit["elo"]).max() < 1e-3
    assert fit["position"] == pytest.approx(2.0 * behavior.ELO_PER_LOGIT, rel=1e-3)


def test_elo_interval_covers_the_estimate_and_has_width_under_noise():
    rng = np.random.default_rng(3)
    beta = rng.normal(0, 1, 10)
    pairs = behavior.preference_pairs(10, per_item=3, seed=0)
    fit = behavior.elo_with_ci(10, pairs, _letter_scores(beta, 0.0, pairs, rng, noise=1.0), n_boot=100)
    assert (fit["ci"][0] <= fit["elo"] + 1e-6).all() and (fit["elo"] <= fit["ci"][1] + 1e-6).all()
    assert (fit["ci"][1] - fit["ci"][0]).min() > 0


def test_bh_and_holm_on_a_worked_example():
    p = [0.01, 0.04, 0.03, 0.5]
    # BH: sorted p * n / rank = .04, .06, .0533, .5, then the running minimum from the top
    np.testing.assert_allclose(behavior.bh_adjust(p), [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    # Holm: sorted p * (n - rank + 1) = .04, .09, .08, .5, then the running maximum
    np.testing.assert_allclose(behavior.holm_adjust(p), [0.04, 0.09, 0.09, 0.5])


def test_null_machinery_gives_about_five_percent_false_positives():
    rng = np.random.default_rng(0)
    n_scen, trials, hits = 40, 1000, 0
    for _ in range(trials):
        # every direction, emotion or random, shifts all scenarios by its own offset plus scenario noise
        nulls = [rng.normal(rng.normal(0, 0.3), 1.0, n_scen) for _ in range(20)]
        emotion = {"random-emotion": rng.normal(rng.normal(0, 0.3), 1.0, n_scen)}
        hits += behavior.paired_effects(emotion, nulls)["random-emotion"]["p"] < 0.05
    assert 0.03 <= hits / trials <= 0.075


def test_null_machinery_detects_a_planted_effect():
    rng = np.random.default_rng(1)
    nulls = [rng.normal(rng.normal(0, 0.3), 1.0, 40) for _ in range(20)]
    res = behavior.paired_effects({"planted": rng.normal(2.0, 1.0, 40)}, nulls)["planted"]
    assert res["p"] < 0.01 and res["null_percentile"] == 100.0
    assert res["ci"][0] > res["null_band"][1]


def test_probe_correlations_find_a_planted_emotion_after_bh():
    rng = np.random.default_rng(2)
    elo = rng.normal(0, 100, 80)
    proj = rng.normal(0, 1, (80, 50))
    proj[:, 7] = elo / 100 + rng.normal(0, 0.3, 80)
    df = behavior.probe_correlations(proj, elo, [f"e{k}" for k in range(50)])
    sig = set(df[df.p_bh < 0.05].emotion)
    assert "e7" in sig and len(sig) <= 3


def test_steering_for_adds_the_vector_steer_adds(tiny_model):
    import torch
    from emolib.steering import steer
    from emolib.vectors import EmotionVectors

    d = tiny_model.cfg.d_model
    vecs = EmotionVectors(["calm", "desperate"], [1], torch.randn(1, 2, d, generator=torch.Generator().manual_seed(0)),
                          torch.zeros(1, d), "tiny", "mean-diff")
    norms = {1: 3.0}
    s = behavior.steering_for(vecs, 1, norms, alpha=0.5, emotion="calm")
    with steer(tiny_model, vecs, emotions="calm", layers=[1], alpha=0.5, norms=norms) as added:
        torch.testing.assert_close(s.vector.float(), added[1].float())
    r = behavior.steering_for(vecs, 1, norms, alpha=0.5, random_seed=4)
    m = behavior.steering_for(vecs, 1, norms, alpha=0.5, random_seed=4, null_kind=behavior.NullKind.EMOTION_MIXTURE)
    assert float(m.vector.norm()) == pytest.approx(float(s.vector.norm()), rel=1e-5)
    assert float(r.vector.norm()) == pytest.approx(float(s.vector.norm()), rel=1e-5)  # equal-norm null
