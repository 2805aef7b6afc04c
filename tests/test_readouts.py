"""The chapter-5 readouts and their validation gate, on the tiny random model and planted models."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from emolib import behavior, readouts
from emolib.chat import encode
from emolib.hooks import residual_edit
from emolib.readouts import Item, OrderScores, Readout
from emolib.scoring import letter_ids


def _unembed_direction(model, token_ids: list[int]) -> torch.Tensor:
    """A residual direction that raises ``token_ids``' logits: their unembedding rows, summed."""
    w = model.original_model.lm_head.weight.detach().float()  # [vocab, d_model]
    v = w[token_ids].sum(0)
    return v / v.norm()


@contextlib.contextmanager
def planted(model, direction: torch.Tensor, scale: float = 200.0):
    """A planted model: the last residual is pushed far along ``direction`` at every position."""
    with residual_edit(model, {model.cfg.n_layers - 1: scale * direction}):
        yield


def _ids(model, text: str) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=False).input_ids)


def test_option_logprobs_match_a_full_forward(tiny_model):
    prefix, option = "The quick brown fox", "jumps over the lazy dog."
    got = readouts.option_logprobs(tiny_model, [prefix, "She walked"], [option, "to the market"])
    pre = encode(tiny_model.tokenizer, prefix)
    opt = _ids(tiny_model, " " + option)
    ids = torch.tensor([pre + opt])
    with torch.no_grad():
        logp = torch.log_softmax(tiny_model(ids)[0].float(), -1)
    want = np.mean([float(logp[len(pre) - 1 + k, t]) for k, t in enumerate(opt)])
    assert got[0] == pytest.approx(want, abs=1e-4)
    # batching with a different-length row (padding) does not change the score
    alone = readouts.option_logprobs(tiny_model, [prefix], [option])
    assert alone[0] == pytest.approx(got[0], abs=1e-4)


def test_cloze_score_is_invariant_to_the_options_position(tiny_model):
    items = [Item("Which is an animal?", "the fox", "the market"), Item("Which is food?", "bread", "windows")]
    swapped = [Item(it.question, it.second, it.first) for it in items]
    for r in (Readout.CLOZE, Readout.CALIBRATED):
        a = readouts.score_items(tiny_model, items, r)
        b = readouts.score_items(tiny_model, swapped, r)
        np.testing.assert_allclose(a.order1, a.order2)  # the order never enters the prompt
        np.testing.assert_allclose(a.content, -b.content, atol=1e-6)


def test_letter_decomposition_separates_bias_and_content():
    b, c = np.array([2.0, -1.0, 0.5]), np.array([0.3, -0.7, 1.1])
    l1, l2 = b + c, b - c
    s = OrderScores(Readout.LETTER, l1, -l2, letter_logit=np.stack([l1, l2]), mass=np.full((2, 3), 0.5))
    np.testing.assert_allclose(s.content, c)
    np.testing.assert_allclose(s.letter_bias, b)


def test_an_always_a_model_has_no_content_preference_and_fails_the_gate(tiny_model):
    a, b = letter_ids(tiny_model.tokenizer)
    w = tiny_model.original_model.lm_head.weight.detach().float()
    toward_a = (w[a] - w[b]) / (w[a] - w[b]).norm()
    items = [Item("Which is an animal?", "the fox", "the market"), Item("Which is food?", "bread", "windows"),
             Item("Which is weather?", "the storm", "the cheese"), Item("Which city?", "Paris", "apples")]
    with planted(tiny_model, toward_a):
        s = readouts.score_items(tiny_model, items, Readout.LETTER)
    assert (s.letter_logit > 0.5).all()                     # it says A in both orders
    assert np.abs(s.content).max() < 0.01 * np.abs(s.letter_bias).min()  # content is ~0 next to the bias
    row = readouts.validation_row(s)
    assert row["both_order_accuracy"] == 0.0
    table = __import__("pandas").DataFrame([row]).set_index("readout")
    assert readouts.choose_readout(table) == (None, False)


def test_a_planted_text_preference_passes_the_gate_and_is_recovered(tiny_model):
    target = _ids(tiny_model, " fox")
    plant = _unembed_direction(tiny_model, target)
    controls = [Item(q, "the fox", w) for q, w in [("Which is an animal?", "the market"), ("Which runs?", "bread"),
                                                   ("Which is quick?", "the windows"), ("Which is brown?", "cheese"),
                                                   ("Which jumps?", "the storm"), ("Which has a tail?", "Paris")]]
    with planted(tiny_model, plant, scale=50.0):
        table, raw = readouts.validate(tiny_model, controls, readouts=(Readout.CLOZE, Readout.LETTER))
        readout, passed = readouts.choose_readout(table)
        assert passed and readout is Readout.CLOZE
        assert table.loc["cloze", "both_order_accuracy"] == 1.0
        texts = ["the fox", "the market", "a fox", "the cheese", "fox", "the storm"]
        pairs = behavior.preference_pairs(len(texts), per_item=2, seed=0)
        fit = behavior.elo_with_ci(len(texts), pairs, behavior.pair_scores(tiny_model, texts, pairs, readout), n_boot=20)
    fox = np.array(["fox" in t for t in texts])
    assert fit["elo"][fox].min() > fit["elo"][~fox].max()  # the planted preference is recovered
    assert abs(fit["position"]) < 1e-6                      # cloze has no position to be biased by


def test_steering_masks_never_include_bos(tiny_model, monkeypatch):
    seen = []

    class Recorder(readouts.Steering):
        def at(self, model, mask):
            seen.append(mask.clone())
            return contextlib.nullcontext()

    items = [Item("Which is an animal?", "the fox", "the market")]
    for r in Readout:
        for where in readouts.Where:
            readouts.score_items(tiny_model, items, r, steering=Recorder(0, torch.zeros(tiny_model.cfg.d_model)),
                                 where=where)
    # passes that start at BOS (prefixes, letter prompts) are wider than any option-only pass of a
    # cached prefix, whose positions come after BOS by construction
    longest_option = max(len(_ids(tiny_model, " " + o)) for o in ("the fox", "the market"))
    from_bos = [m for m in seen if m.shape[1] > longest_option]
    assert from_bos and all(not m[:, 0].any() for m in from_bos)
    assert all(m.any() for m in seen)


@pytest.mark.real_model
def test_cloze_beats_letters_on_a_real_model():
    from tests.conftest import real_model
    from emolib.data import load_control_questions

    model = real_model("smollm2-135m-instruct")
    qs = load_control_questions()[:16]
    table, _ = readouts.validate(model, [Item(q.question, q.correct, q.wrong) for q in qs],
                                 readouts=(Readout.CLOZE, Readout.LETTER))
    assert table.loc["cloze", "both_order_accuracy"] > table.loc["letter", "both_order_accuracy"]
    assert 0 <= table.loc["letter", "letter_mass"] <= 1


def test_cached_prefix_scoring_matches_a_steered_full_forward(tiny_model, monkeypatch):
    """The prefix is run once and reused; steering it (ALL) or only the option (FIRST) must give the
    same numbers as one steered pass over the whole sequence."""
    from emolib.steering import random_direction, steer

    prefix, option = "She walked to the market", "and bought bread, apples and cheese."
    pre = encode(tiny_model.tokenizer, prefix)
    opt = _ids(tiny_model, " " + option)
    ids = torch.tensor([pre + opt])
    d = random_direction(tiny_model.cfg.d_model, seed=3)
    monkeypatch.setattr(readouts, "CACHE_MIN_PREFIX_TOKENS", 0)  # take the cached-prefix path
    for where in readouts.Where:
        mask = torch.zeros(1, ids.shape[1], dtype=torch.bool)
        mask[0, (1 if where is readouts.Where.ALL else len(pre)):] = True
        with torch.no_grad(), steer(tiny_model, direction=d, layers=[0], alpha=2.0, norms={0: 1.0}, positions=mask):
            logp = torch.log_softmax(tiny_model(ids)[0].float(), -1)
        want = np.mean([float(logp[len(pre) - 1 + k, t]) for k, t in enumerate(opt)])
        steering = readouts.Steering(0, 2.0 * d)
        got = readouts.option_logprobs(tiny_model, [prefix, prefix], [option, "to the market"], steering=steering,
                                       where=where)
        assert got[0] == pytest.approx(want, abs=1e-4), where


def test_cached_and_batched_paths_agree(tiny_model, monkeypatch):
    """Short one-off prefixes take batched whole passes, long or shared ones a cached prefix: same scores."""
    prefixes = ["The quick brown fox", "She walked to the market", "I could not sleep"]
    options = ["jumps over the lazy dog.", "and bought bread.", "the storm rattled the windows."]
    steering = readouts.Steering(1, 3.0 * _unembed_direction(tiny_model, _ids(tiny_model, " fox")))
    for where in readouts.Where:
        batched = readouts.option_logprobs(tiny_model, prefixes, options, steering=steering, where=where)
        monkeypatch.setattr(readouts, "CACHE_MIN_PREFIX_TOKENS", 0)
        cached = readouts.option_logprobs(tiny_model, prefixes, options, steering=steering, where=where)
        monkeypatch.undo()
        np.testing.assert_allclose(batched, cached, atol=1e-4)


def test_conditions_on_the_batch_axis_equal_one_condition_at_a_time(tiny_model):
    """Chapter 5 scores every steering condition of a scenario in one batch over one prefix pass; the
    numbers must be those of scoring each condition separately (and a zero row those of no steering)."""
    g = torch.Generator().manual_seed(0)
    d = tiny_model.cfg.d_model
    vecs = torch.cat([torch.zeros(1, d), 3.0 * torch.randn(3, d, generator=g)])  # [C, d_model]
    items = [Item("Which is bigger?", "an elephant on the road", "a mouse", context="Two animals walk by."),
             Item("Pick one.", "tea", "a long walk in the rain", context="")]
    layer = 1
    for readout in (Readout.CLOZE, Readout.CALIBRATED):
        got = readouts.content_conditions(tiny_model, items, readout, vecs, layer=layer)
        assert got.shape == (4, 2)
        for c, v in enumerate(vecs):
            st = None if c == 0 else readouts.Steering(layer, v)
            ref = readouts.score_items(tiny_model, items, readout, steering=st, where=readouts.Where.ALL).content
            np.testing.assert_allclose(got[c], ref, atol=1e-4, err_msg=f"{readout} condition {c}")
    # options of different lengths after one prefix
    opts = ["x", "the long way round", "a b c d e", "tea"]
    lp = readouts.option_logprobs_conditions(tiny_model, "Answer:", opts, vecs, layer=layer)
    for c, v in enumerate(vecs):
        ref = readouts.option_logprobs(tiny_model, ["Answer:"] * 4, opts, steering=readouts.Steering(layer, v))
        np.testing.assert_allclose(lp[c], ref, atol=1e-4)


def test_letter_readout_recovers_a_planted_content_preference_with_its_sign(tiny_model, monkeypatch):
    """A fake letter scorer whose logit P(A) is b + c when ``first`` is listed as (A) and b - c when it is
    (B): score_items must return content c (right sign, right order), and validation must credit it."""
    items = [Item("Which is an animal?", "the fox", "the market"), Item("Which is food?", "bread", "windows"),
             Item("Which is weather?", "the storm", "cheese"), Item("Which city?", "Paris", "apples")]
    c = np.array([1.5, 0.7, -0.4, 0.0])  # the last item: no content preference at all (a tie)
    b = 2.0                              # a strong bias toward A, the same in both orders

    def fake(model, prompts, spans, *, batch_size, steering, where):
        n = len(items)
        logit = np.concatenate([b + c, b - c])  # order 1 lists first as (A); order 2 as (B)
        for k, (p, it) in enumerate(zip(prompts, items + items)):
            assert ("(A) " + it.first in p) == (k < n)  # the prompts come in the order the algebra assumes
        return logit, np.full(2 * n, 0.9)

    monkeypatch.setattr(readouts, "_letter_logits", fake)
    s = readouts.score_items(tiny_model, items, Readout.LETTER)
    np.testing.assert_allclose(s.content, c)
    np.testing.assert_allclose(s.letter_bias, b)
    row = readouts.validation_row(s)
    assert row["accuracy"] == (1 + 1 + 0 + 0.5) / 4 and row["ties"] == 1
    np.testing.assert_allclose(readouts.credit(s), [1, 1, 0, 0.5])
    assert row["both_order_accuracy"] == 0.0  # the bias (2.0) outweighs every content preference in order 2
