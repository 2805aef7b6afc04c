"""Every chapter step that mixes the float32 artifacts (emotion vectors, steering vectors) with the model
must also run when the model computes in bfloat16, and agree with float32 to bfloat16 precision.

The book computes in bfloat16 wherever the hardware does natively, so a step that only ever ran in
float32 would fail there (the logit lens did). The tiny model keeps this fast even where bfloat16 is
emulated.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emolib import readouts
from emolib.chat import encode
from emolib.monitor import token_monitor
from emolib.readouts import Item, Readout
from emolib.selfreport import score_words, word_ids
from emolib.tone import batch_perplexity, tone_experiment
from emolib.validation import logit_lens
from emolib.vectors import EmotionVectors


@pytest.fixture(scope="module")
def models(tiny_model_dir):
    from emolib.models import load_model

    return {d: load_model(str(tiny_model_dir), device="cpu", dtype=d) for d in ("float32", "bfloat16")}


@pytest.fixture(scope="module")
def vecs():
    g = torch.Generator().manual_seed(0)
    return EmotionVectors(["calm", "desperate", "happy"], [0, 1], torch.randn(2, 3, 32, generator=g),
                          torch.zeros(2, 32), "tiny", "mean-diff")


def test_the_models_really_differ_in_dtype(models):
    assert next(models["bfloat16"].parameters()).dtype == torch.bfloat16
    assert next(models["float32"].parameters()).dtype == torch.float32


def test_logit_lens(models, vecs):
    out = logit_lens(models["bfloat16"], vecs, 1, ["calm", "happy"], k=5)
    assert sorted(out) == ["calm", "happy"] and all(len(v) == 5 for v in out.values())


def test_readouts_under_steering(models):
    items = [Item("Which is bigger?", "an elephant", "a mouse", context="Two animals walk by.")]
    vec = 3.0 * torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    got = {d: readouts.content_conditions(m, items, Readout.CLOZE, vec, layer=1) for d, m in models.items()}
    assert np.isfinite(got["bfloat16"]).all()
    np.testing.assert_allclose(got["bfloat16"], got["float32"], atol=0.1)
    letter = readouts.score_items(models["bfloat16"], items, Readout.LETTER,
                                  steering=readouts.Steering(1, vec[0]), where=readouts.Where.FIRST)
    assert np.isfinite(letter.content).all()


def test_selfreport_scoring(models):
    added = torch.zeros(2, 32)
    added[1, 0] = 5.0
    res = {}
    for d, m in models.items():
        ctx = encode(m.tokenizer, "Right now I feel")
        res[d] = score_words(m, ctx, word_ids(m.tokenizer, ["calm", "grief-stricken"]), added=added, layer=1,
                             later_vocab=None).logp.numpy()
    assert np.isfinite(res["bfloat16"]).all()
    np.testing.assert_allclose(res["bfloat16"], res["float32"], atol=0.1)


def test_tone_generation_perplexity_and_monitor(models, vecs):
    m = models["bfloat16"]
    prompts = [encode(m.tokenizer, "Describe a cup of tea.")]
    cond = pd.DataFrame([{"condition": "none", "kind": "none", "alpha": 0.0},
                         {"condition": "calm", "kind": "emotion", "alpha": 0.1}])
    added = torch.stack([torch.zeros(32), 4.0 * vecs.vector("calm", 1, unit=True).float()])
    df = tone_experiment(m, prompts, cond, added, layer=1, max_new_tokens=4, vectors=vecs, project=["calm"])
    assert len(df) == 2 and np.isfinite(df.perplexity).all() and np.isfinite(df.proj_calm).all()
    ppl, acts = batch_perplexity(m, prompts, [encode(m.tokenizer, " and milk", bos=False)], layer=1)
    assert np.isfinite(np.asarray(ppl)).all() and acts.dtype == torch.float32
    trace = token_monitor(m, vecs, 1, ["A calm morning."], ["calm", "happy"])[0]
    assert np.isfinite(np.asarray(trace["scores"], dtype=float)).all()
