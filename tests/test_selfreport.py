"""Self-report scoring: whole-word log-probabilities equal a plain forward pass; summaries on planted data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emolib.chat import encode
from emolib.hooks import residual_edit
from emolib.selfreport import (SelfReport, diagonal_dominance, feeling_contexts, score_words, summarise,
                               wilson_interval, word_ids)
from emolib.steering import position_edit

WORDS = ["bought bread", "apples", "the storm rattled", "cheese"]


def reference(model, ctx, ids, added, layer):
    """Whole-word log-probabilities from one full forward pass per word, the context steered by mask."""
    out = []
    for w in ids:
        full = torch.tensor([ctx + w])
        mask = torch.zeros(full.shape[1], dtype=torch.bool)
        mask[: len(ctx)] = True
        with torch.no_grad(), residual_edit(model, {layer: position_edit(added, mask, None)}):
            lp = torch.log_softmax(model(full)[0].float(), -1)
        out.append(sum(lp[len(ctx) - 1 + j, w[j]].item() for j in range(len(w))))
    return out


def test_score_words_equals_full_forward(tiny_model):
    ctx = encode(tiny_model.tokenizer, "She walked to the market and")
    ids = word_ids(tiny_model.tokenizer, WORDS)
    assert max(map(len, ids)) >= 3 and min(map(len, ids)) == 1  # multi-token words of two lengths, and single
    g = torch.Generator().manual_seed(0)
    added = torch.randn(3, tiny_model.cfg.d_model, generator=g) * 5
    added[0] = 0
    ws = score_words(tiny_model, ctx, ids, added=added, layer=0, batch_size=2, later_vocab=None)
    assert ws.later_coverage == 1.0
    for c in range(3):
        np.testing.assert_allclose(ws.logp[c].numpy(), reference(tiny_model, ctx, ids, added[c], 0), atol=1e-4)
    assert not torch.allclose(ws.logp[0], ws.logp[1])
    # the restricted normaliser of later tokens: a lower bound of the mass, close when coverage is high
    sub = score_words(tiny_model, ctx, ids, added=added, layer=0, later_vocab=64)
    assert 0 < sub.later_coverage < 1
    single = [k for k, w in enumerate(ids) if len(w) == 1]
    torch.testing.assert_close(sub.logp[:, single], ws.logp[:, single])
    assert (sub.logp >= ws.logp - 1e-5).all()


def test_steering_the_context_never_touches_bos(tiny_model):
    ctx = encode(tiny_model.tokenizer, "I could not sleep")
    ids = word_ids(tiny_model.tokenizer, ["at", "the storm rattled"])
    added = torch.randn(1, tiny_model.cfg.d_model) * 5
    ws = score_words(tiny_model, ctx, ids, added=added, layer=1, later_vocab=None)
    np.testing.assert_allclose(ws.logp[0].numpy(), reference(tiny_model, ctx, ids, added[0], 1), atol=1e-4)


def test_contexts_have_one_bos_and_several_templates(tiny_model):
    tok = tiny_model.tokenizer
    for chat in (False, True):
        cs = feeling_contexts(tok, chat=chat, n=3)
        assert len(cs) == 3 and all(c[0] == tok.bos_token_id and c.count(tok.bos_token_id) == 1 for c in cs)
    with pytest.raises(ValueError):
        feeling_contexts(tok, chat=False, n=99)


def planted(effect: float, seed: int = 0) -> SelfReport:
    """E emotions, N null directions, 2 strengths; emotion i raises word i by ``effect`` at alpha > 0."""
    rng = np.random.default_rng(seed)
    E, N, W = 30, 40, 30
    base = rng.normal(-8, 1, size=(2, W)).astype(np.float32)
    steered = base[None, None] + rng.normal(0, 0.1, size=(E + N, 2, 2, W)).astype(np.float32)
    for i in range(E):
        steered[i, 1, :, i] += effect
        steered[i, 0, :, i] -= effect
    return SelfReport([f"w{i}" for i in range(W)], [-0.1, 0.1], steered, base, E, ["isotropic"] * N)


def test_summaries_find_a_planted_effect_and_no_effect_in_noise():
    s = summarise(planted(5.0), headline=0.1)
    assert [r["frac_beyond_null"] for r in s["by_alpha"]] == [1.0, 1.0]
    assert s["by_alpha"][1]["median_own_rank"] == 1.0
    assert s["diagonal"]["score"] > 0.95 and s["diagonal"]["p"] < 0.01
    assert len(s["per_emotion"]) == 30 and all(r["null_percentile"] == 100 for r in s["per_emotion"])
    noise = summarise(planted(0.0), headline=0.1)
    assert all(r["frac_beyond_null"] <= 0.2 for r in noise["by_alpha"])
    assert abs(noise["diagonal"]["score"] - 0.5) < 0.15 and noise["diagonal"]["p"] > 0.01
    with pytest.raises(ValueError, match="headline"):
        summarise(planted(1.0), headline=0.3)


def test_diagonal_dominance_planted_and_shuffled():
    rng = np.random.default_rng(1)
    m = rng.normal(size=(20, 20)) + 5 * np.eye(20)
    assert diagonal_dominance(m)["score"] == pytest.approx(1.0)
    shuffled = m[rng.permutation(20)]
    assert diagonal_dominance(shuffled)["score"] < 0.8
    # a word every push raises (a column offset) is no evidence
    assert diagonal_dominance(m + 100 * (np.arange(20) == 3))["score"] == pytest.approx(1.0)


def test_wilson_interval():
    lo, hi = wilson_interval(5, 10)
    assert lo < 0.5 < hi and 0 < lo and hi < 1
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.real_model
def test_score_words_exact_on_embedded_models(embedded_model):
    name, model = embedded_model
    from emolib.chat import encode as enc

    ctx = enc(model.tokenizer, "Right now I feel")
    ids = word_ids(model.tokenizer, ["calm", "grief-stricken", "happy"])
    added = torch.zeros(2, model.cfg.d_model)
    added[1, 0] = 200.0
    layer = model.cfg.n_layers // 2
    ws = score_words(model, ctx, ids, added=added, layer=layer, later_vocab=None)
    np.testing.assert_allclose(ws.logp[1].numpy(), reference(model, ctx, ids, added[1], layer), atol=2e-3)
    sub = score_words(model, ctx, ids, added=added, layer=layer, later_vocab=4096)
    assert sub.later_coverage > 0.9
    np.testing.assert_allclose(sub.logp.numpy(), ws.logp.numpy(), atol=0.05)


def test_pass_rule_holds_its_false_positive_rate_with_unequal_null_kinds():
    """A direction drawn like the null passes at most ~5% of the time, even when one kind varies
    twice as much as the other (pooling the kinds' percentiles would let it pass more often)."""
    import numpy as np

    from emolib.selfreport import PASS_P, null_pvalue

    rng = np.random.default_rng(0)
    kinds = ["isotropic"] * 19 + ["emotion_mixture"] * 19
    scale = np.r_[np.full(19, 1.0), np.full(19, 2.0)][:, None]
    hits = []
    for _ in range(400):
        null = rng.normal(size=(38, 50)) * scale               # [N, W]
        own = rng.normal(size=50) * 2.0                         # like the wider kind
        hits.append(null_pvalue(own, null, kinds, upper=True) <= PASS_P)
    rate = np.mean(hits)
    assert rate <= 0.06, rate
    planted = null_pvalue(np.full(50, 10.0), null, kinds, upper=True)
    assert (planted <= PASS_P).all() and np.isclose(planted, 1 / 20).all()


def test_null_calibration_can_pass_and_stays_near_its_rate():
    """With 20 directions per kind, a null direction tested against the other 19 of its kind can reach
    p = 0.05 (with 19 per kind it never could, and the check read 0% by construction); it then passes
    exactly when it is the most extreme of all 40, so the rate is 1/40 whatever the data."""
    from emolib.selfreport import null_calibration

    rng = np.random.default_rng(3)
    E, N = 200, 40
    steered = rng.normal(size=(E + N, 2, 1, E))
    sr = SelfReport([f"w{i}" for i in range(E)], [-0.1, 0.1], steered, np.zeros((1, E)), E,
                    ["isotropic"] * 20 + ["emotion_mixture"] * 20)
    for row in null_calibration(sr):
        assert row["n_trials"] == N * E
        assert row["null_pass_rate"] == pytest.approx(1 / 40), row
    short = SelfReport(sr.words, sr.alphas, steered[: E + 38], sr.base, E,
                       ["isotropic"] * 19 + ["emotion_mixture"] * 19)
    assert all(r["null_pass_rate"] == 0.0 for r in null_calibration(short))
