"""The fast unembedding equals the plain one: log-probabilities, greedy tokens (ties included), soft-capping, bias."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from emolib import unembed


def fake_hf(*, vocab: int = 1000, d: int = 16, cap: float | None = None, bias: bool = False, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(d, vocab, bias=bias)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=g))
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=g))
    return SimpleNamespace(lm_head=head, config=SimpleNamespace(final_logit_softcapping=cap))


def reference_logits(hf, h):
    z = hf.lm_head(h)
    cap = hf.config.final_logit_softcapping
    return torch.tanh(z / cap) * cap if cap else z


@pytest.mark.parametrize("cap,bias", [(None, False), (3.0, False), (None, True)])
def test_log_probs_and_logits_equal_the_full_softmax(cap, bias):
    hf = fake_hf(cap=cap, bias=bias)
    g = torch.Generator().manual_seed(1)
    h = torch.randn(7, 16, generator=g)
    t = torch.randint(0, 1000, (7, 3), generator=g)
    with torch.no_grad():
        ref = torch.log_softmax(reference_logits(hf, h), -1)
        got = unembed.log_probs(hf, h, t, chunk=97)  # slices that do not divide the vocabulary
        one = unembed.log_probs(hf, h, t[:, 0])
        assert torch.allclose(got, ref.gather(1, t), atol=1e-5)
        assert one.shape == (7,) and torch.allclose(one, ref[:, t[0, 0]].new_tensor(ref.gather(1, t[:, :1])[:, 0]), atol=1e-5)
        assert torch.allclose(unembed.logits(hf, h), reference_logits(hf, h), atol=1e-5)
    assert got.dtype == torch.float32


def test_greedy_is_argmax_and_keeps_the_first_of_tied_tokens():
    hf = fake_hf(vocab=300, d=8)
    top = torch.zeros(8)
    top[0] = 20.0  # far above any random row's logit for h = e_0
    with torch.no_grad():
        for k in (40, 41, 250):  # the same maximum twice within a slice and once in a later slice
            hf.lm_head.weight[k] = top
    h = torch.eye(8)[:1]
    g = torch.Generator().manual_seed(2)
    hs = torch.cat([h, torch.randn(5, 8, generator=g)])
    with torch.no_grad():
        got = unembed.greedy(hf, hs, chunk=64)
        assert got[0].item() == 40
        assert torch.equal(got, reference_logits(hf, hs).argmax(-1))
