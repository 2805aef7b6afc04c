"""Tone by human word norms, the tone and projection summaries against a null, and the fluency guard."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emolib.chat import encode
from emolib.tone import (batch_perplexity, projection_summary, text_tone, tone_summary, usable_alpha, word_norms)


def test_word_norms_lookup():
    norms = word_norms()
    assert len(norms) > 10000
    assert norms["happy"][0] > 7 and norms["funeral"][0] < 3
    v, a, n = text_tone("Happy HAPPY, zzzqx happy!")
    assert n == 3 and v == pytest.approx(norms["happy"][0]) and a == pytest.approx(norms["happy"][1])
    assert np.isnan(text_tone("zzzqx qqqv")[0]) and text_tone("")[2] == 0
    assert text_tone("a lovely gift")[0] > text_tone("a horrible funeral")[0]


def frame(shift: float, seed: int = 0) -> pd.DataFrame:
    """3 prompts; unsteered, one emotion at +-0.1 shifting valence by +-shift, 20 null directions."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(6):
        base = rng.normal(5, 0.3)
        rows.append({"prompt": p, "condition": "none", "kind": "none", "alpha": 0.0, "valence": base,
                     "arousal": 4.0, "proj_joy": 0.0, "perplexity": 10.0, "repetition": 0.0})
        for a in (-0.1, 0.1):
            rows.append({"prompt": p, "condition": "joy", "kind": "emotion", "alpha": a,
                         "valence": base + np.sign(a) * shift + rng.normal(0, 0.05), "arousal": 4.0,
                         "proj_joy": np.sign(a) * shift, "perplexity": 12.0 if a > 0 else 50.0, "repetition": 0.0})
            for n in range(20):
                rows.append({"prompt": p, "condition": f"null{n}", "kind": "null", "alpha": a,
                             "valence": base + rng.normal(0, 0.05), "arousal": 4.0 + rng.normal(0, 0.05),
                             "proj_joy": rng.normal(0, 0.05), "perplexity": 11.0, "repetition": 0.0})
    return pd.DataFrame(rows)


def test_tone_summary_planted_and_null():
    s = tone_summary(frame(1.0)).set_index(["measure", "alpha"])
    assert s.loc[("valence", 0.1), "shift"] == pytest.approx(1.0, abs=0.1)
    assert s.loc[("valence", 0.1), "null_percentile"] == 100 and s.loc[("valence", -0.1), "null_percentile"] == 0
    assert s.loc[("valence", 0.1), "null_lo"] < 0 < s.loc[("valence", 0.1), "null_hi"] < 0.2
    flat = tone_summary(frame(0.0)).set_index(["measure", "alpha"])
    assert (flat["shift"].abs() < 0.1).all()
    p = projection_summary(frame(1.0), ["joy"]).set_index("alpha")
    assert p.loc[0.1, "minus_null"] == pytest.approx(1.0, abs=0.1) and p.loc[0.1, "null_percentile"] == 100


def test_usable_alpha_stops_at_the_first_broken_strength():
    df = frame(1.0)
    assert usable_alpha(df) == 0.0  # alpha -0.1 breaks perplexity (50 > 2 x 10), so |alpha| 0.1 is not usable
    df.loc[df.kind == "emotion", "perplexity"] = 12.0
    assert usable_alpha(df) == 0.1


def test_batch_perplexity_matches_one_by_one(tiny_model):
    tok = tiny_model.tokenizer
    ps = [encode(tok, "The quick brown fox"), encode(tok, "She walked to the market")]
    cs = [encode(tok, " jumps over the lazy dog", bos=False), encode(tok, " and bought bread", bos=False)]
    both, acts = batch_perplexity(tiny_model, ps, cs, layer=1)
    assert acts.shape == (2, tiny_model.cfg.d_model)
    for i in range(2):
        with torch.no_grad():
            lp = torch.log_softmax(tiny_model(torch.tensor([ps[i] + cs[i]]))[0].float(), -1)
        pos = torch.arange(len(ps[i]) - 1, len(ps[i]) + len(cs[i]) - 1)
        expected = float(torch.exp(-lp[pos, torch.tensor(cs[i])].mean()))
        assert both[i] == pytest.approx(expected, rel=1e-4)
        with torch.no_grad():
            _, cache = tiny_model.run_with_cache(torch.tensor([ps[i] + cs[i]]),
                                                 names_filter=lambda n: n == "blocks.1.hook_resid_post")
        mean = cache["blocks.1.hook_resid_post"][0, len(ps[i]):].mean(0)
        torch.testing.assert_close(acts[i], mean, atol=1e-4, rtol=1e-4)
