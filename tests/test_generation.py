"""Batched steered generation: left padding, per-row steering, BOS never steered, same tokens as one at a time."""

from __future__ import annotations

import pytest
import torch

from emolib.chat import encode
from emolib.generation import _row_edit, generate_batch, left_pad, right_pad
from emolib.hooks import count_live_hooks
from emolib.steering import Span

TEXTS = ["The quick brown fox", "She walked to the market and bought bread, apples and", "I could"]


def test_left_pad_and_row_mask_skip_padding_and_bos():
    ids, mask = left_pad([[1, 5, 6], [1, 7]], pad_id=0)
    assert ids.tolist() == [[1, 5, 6], [0, 1, 7]] and mask.tolist() == [[1, 1, 1], [0, 1, 1]]
    added = torch.ones(2, 4)
    edit = _row_edit(added, mask, Span.ALL)
    out = edit(torch.zeros(2, 3, 4))
    assert out[..., 0].tolist() == [[0, 1, 1], [0, 0, 1]]  # pads and each row's BOS untouched
    assert edit(torch.zeros(2, 1, 4))[..., 0].tolist() == [[1], [1]]  # cached steps: every row
    prompt_only = _row_edit(added, mask, Span.PROMPT)
    prompt_only(torch.zeros(2, 3, 4))
    assert prompt_only(torch.zeros(2, 1, 4)).abs().sum() == 0


def test_right_pad_pads_on_the_right_with_a_mask():
    toks, mask = right_pad([[5, 6, 7], [8]], pad_id=0)
    assert toks.tolist() == [[5, 6, 7], [8, 0, 0]] and toks.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_batched_greedy_equals_one_at_a_time(tiny_model):
    ps = [encode(tiny_model.tokenizer, t) for t in TEXTS]
    g = torch.Generator().manual_seed(0)
    added = torch.randn(3, tiny_model.cfg.d_model, generator=g) * 4
    added[1] = 0  # an unsteered row among steered ones
    for a in (None, added):
        kw = {} if a is None else {"layer": 0}
        one = [generate_batch(tiny_model, [p], max_new_tokens=8, stop_at_eos=False,
                              **({} if a is None else {"added": a[i: i + 1], **kw}))[0] for i, p in enumerate(ps)]
        together = generate_batch(tiny_model, ps, max_new_tokens=8, stop_at_eos=False, batch_size=3,
                                  **({} if a is None else {"added": a, **kw}))
        assert together == one
        assert all(len(x) == 8 for x in together)
    plain = generate_batch(tiny_model, ps, max_new_tokens=8, stop_at_eos=False)
    steered = generate_batch(tiny_model, ps, max_new_tokens=8, stop_at_eos=False, added=added, layer=0)
    assert steered[1] == plain[1] and steered[0] != plain[0] and steered[2] != plain[2]
    assert count_live_hooks(tiny_model) == 0


def test_batched_matches_the_bridge_generate(tiny_model):
    p = encode(tiny_model.tokenizer, TEXTS[1])
    ref = tiny_model.generate(torch.tensor([p]), max_new_tokens=8, do_sample=False, stop_at_eos=False,
                              verbose=False, use_past_kv_cache=True)[0, len(p):].tolist()
    assert generate_batch(tiny_model, [p], max_new_tokens=8, stop_at_eos=False) == [ref]


def test_bad_arguments(tiny_model):
    p = [encode(tiny_model.tokenizer, TEXTS[0])]
    with pytest.raises(ValueError, match="both"):
        generate_batch(tiny_model, p, max_new_tokens=2, added=torch.zeros(1, tiny_model.cfg.d_model))
    with pytest.raises(ValueError, match="added must be"):
        generate_batch(tiny_model, p, max_new_tokens=2, added=torch.zeros(2, tiny_model.cfg.d_model), layer=0)


@pytest.mark.real_model
def test_batched_equals_one_at_a_time_on_embedded_models(embedded_model):
    from emolib.chat import encode_chat

    name, model = embedded_model
    prompts = ["Tell me about the weather today.", "Describe what you will do this afternoon with a friend."]
    ps = [encode_chat(model.tokenizer, [{"role": "user", "content": t}]) for t in prompts]
    g = torch.Generator().manual_seed(0)
    added = torch.randn(2, model.cfg.d_model, generator=g)
    added = 0.5 * added / added.norm(dim=-1, keepdim=True) * 100
    layer = model.cfg.n_layers // 2
    one = [generate_batch(model, [p], max_new_tokens=6, stop_at_eos=False, added=added[i: i + 1], layer=layer)[0]
           for i, p in enumerate(ps)]
    together = generate_batch(model, ps, max_new_tokens=6, stop_at_eos=False, added=added, layer=layer)
    assert together == one, name
