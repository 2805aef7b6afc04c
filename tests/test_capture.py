"""Capture: padding, BOS handling, pooling and caching, checked against unpadded references."""

from __future__ import annotations

import pytest
import torch

from emolib import capture as cap
from emolib.capture import CaptureCacheError, capture, mean_resid_norms, span_weights, tokenize
from emolib.hooks import count_live_hooks

TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "I could not sleep.",
    "She walked to the market and bought bread, apples and cheese, then went home.",
    "Storm.",
    "User: What is the capital of France?\n\nAssistant: Paris.",
]


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path / "cache"))


def reference(model, text, layers):
    """Unpadded, one text at a time, every position: [n_tokens, n_layers, d]."""
    ids = torch.tensor([tokenize(model, [text])[0]])
    with torch.no_grad():
        _, c = model.run_with_cache(ids, names_filter=lambda n: n.endswith("hook_resid_post"))
    return torch.stack([c[f"blocks.{layer}.hook_resid_post"][0] for layer in layers], dim=1)


@pytest.mark.parametrize("batch_size", [1, 2, 5])
def test_mean_pooling_matches_unpadded_reference_and_skips_bos(tiny_model, batch_size):
    layers = [0, 1]
    res = capture(tiny_model, TEXTS, layers=layers, start=3, batch_size=batch_size, use_cache=False)
    assert res.activations.shape == (len(TEXTS), 2, tiny_model.cfg.d_model)
    for i, text in enumerate(TEXTS):
        ref = reference(tiny_model, text, layers)
        n = ref.shape[0]
        expected = ref[3:].mean(0) if n > 3 else ref[1:].mean(0)
        torch.testing.assert_close(res.activations[i], expected, atol=1e-5, rtol=1e-4)
        # BOS is excluded: including it would change the mean.
        assert not torch.allclose(res.activations[i], ref.mean(0), atol=1e-4)
    assert count_live_hooks(tiny_model) == 0


def test_span_weights_pool_each_text_from_start_and_fall_back_when_short():
    # 15 tokens: positions 10..14; 5 tokens (too short for start 10): 1..4; BOS alone: the BOS itself.
    first, w = span_weights([15, 5, 1], start=10)
    assert first == 0 and w.shape == (3, 1, 15)
    expected = torch.zeros(3, 15)
    expected[0, 10:15], expected[1, 1:5], expected[2, 0] = 1 / 5, 1 / 4, 1.0
    torch.testing.assert_close(w[:, 0], expected)
    # Without a short text the weights start at the first pooled position; start 0 still skips BOS.
    first, w = span_weights([12, 14], start=10)
    assert first == 10 and w.shape == (2, 1, 4)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 1))
    assert span_weights([3], start=0)[0] == 1


def test_last_and_all_pooling(tiny_model):
    last = capture(tiny_model, TEXTS, layers=[1], pooling="last", batch_size=3, use_cache=False)
    every = capture(tiny_model, TEXTS, layers=[0, 1], pooling="all", batch_size=3)
    for i, text in enumerate(TEXTS):
        ref = reference(tiny_model, text, [0, 1])
        torch.testing.assert_close(last.activations[i, 0], ref[-1, 1], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(every.activations[i], ref[1:], atol=1e-5, rtol=1e-4)


def test_stops_after_deepest_layer(tiny_model, monkeypatch):
    """Capturing layer 0 of 2 must never run block 1 (nor, therefore, the unembedding)."""
    ran = []
    with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_resid_post", lambda x, hook: ran.append(1))]):
        capture(tiny_model, TEXTS, layers=[0], use_cache=False)
    assert ran == []


def test_cache_hit_resume_and_corruption(tiny_model, tmp_path, monkeypatch):
    first = capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2, batch_size=2)
    assert not first.from_cache and first.n_tokens > 0 and first.tokens_per_s > 0
    again = capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2, batch_size=2)
    assert again.from_cache
    torch.testing.assert_close(first.activations, again.activations)
    # An interrupted run: the first chunk (one batch) finishes, the second batch is interrupted.
    final = next((tmp_path / "cache" / "activations").glob("*/activations.safetensors"))
    directory = final.parent
    final.unlink()
    real = cap._forward_batch
    done = []

    def interrupted(*a, **k):
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **k)
    monkeypatch.setattr(cap, "_forward_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2, batch_size=2)
    assert [p.name for p in directory.iterdir()] == ["chunk-000000-000002.safetensors"]
    calls = []
    monkeypatch.setattr(cap, "_forward_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2, batch_size=2)
    monkeypatch.setattr(cap, "_forward_batch", real)
    assert len(calls) == 2, "only the two unfinished chunks are recomputed"
    torch.testing.assert_close(resumed.activations, first.activations)
    assert not list(directory.glob("chunk-*")), "chunks are removed once the final file exists"
    final.write_bytes(b"not a safetensors file")
    with pytest.raises(CaptureCacheError, match="unreadable.*delete"):
        capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2, batch_size=2)


def test_different_settings_do_not_share_a_cache(tiny_model):
    a = capture(tiny_model, TEXTS, layers=[1], start=1)
    b = capture(tiny_model, TEXTS, layers=[1], start=4)
    assert not b.from_cache and not torch.allclose(a.activations, b.activations)


@pytest.mark.parametrize("kwargs, message", [
    (dict(texts=[]), "texts is empty"),
    (dict(texts=["ok", ""]), "non-empty string"),
    (dict(layers=[2]), "out of range"),
    (dict(layers=[-1]), "out of range"),
    (dict(pooling="max"), "unknown pooling 'max'"),
    (dict(batch_size=0), "batch_size"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tiny_model, tmp_path, kwargs, message):
    args = dict(texts=TEXTS, layers=[0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        capture(tiny_model, args.pop("texts"), **args)
    assert not (tmp_path / "cache" / "activations").exists()


def test_mean_resid_norms_excludes_bos(tiny_model):
    norms = mean_resid_norms(tiny_model, TEXTS)
    assert norms.shape == (tiny_model.cfg.n_layers,)
    refs = [reference(tiny_model, t, [0, 1]) for t in TEXTS]
    expected = torch.cat([r[1:].norm(dim=-1) for r in refs]).mean(0)
    torch.testing.assert_close(norms, expected, atol=1e-4, rtol=1e-4)
