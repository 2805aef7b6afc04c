"""Sealed cache files: a garbled byte, a wrong shape or a wrong dtype is caught, and the sentence-embedding
cache recomputes a damaged file instead of reading it."""

from __future__ import annotations

import pytest
import torch

from emolib.sealed import Damaged, open_sealed, seal


def test_seal_round_trip_and_every_kind_of_damage(tmp_path):
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    f = tmp_path / "x.safetensors"
    f.write_bytes(seal("x", t, {"note": "a"}))
    got, meta = open_sealed(f, "x", (3, 4))
    assert torch.equal(got, t) and meta == {"note": "a"}
    with pytest.raises(Damaged, match="shape"):
        open_sealed(f, "x", (4, 3))
    with pytest.raises(Damaged, match="unreadable"):
        open_sealed(f, "y", (3, 4))
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF  # inside the tensor's bytes, which safetensors never checks
    f.write_bytes(bytes(data))
    with pytest.raises(Damaged, match="sha256"):
        open_sealed(f, "x", (3, 4))
    f.write_bytes(b"not a safetensors file")
    with pytest.raises(Damaged, match="unreadable"):
        open_sealed(f, "x", (3, 4))


def test_sentence_embeddings_are_cached_and_a_damaged_cache_is_recomputed(tmp_path, monkeypatch):
    from emolib import pipeline

    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    texts = ["She smiled at the letter.", "The train was late again."]
    first = pipeline.sentence_embeddings(texts)
    assert first.shape == (2, pipeline.SENTENCE_DIM) and first.dtype == torch.float32
    (file,) = (tmp_path / "sentence-embeddings").iterdir()
    import sentence_transformers

    class Refuse:
        def __init__(self, *a, **k):
            raise AssertionError("the cache should have been read")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Refuse)
    assert torch.equal(pipeline.sentence_embeddings(texts), first)
    monkeypatch.undo()
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    data = bytearray(file.read_bytes())
    data[-7] ^= 0xFF
    file.write_bytes(bytes(data))
    assert torch.equal(pipeline.sentence_embeddings(texts), first)  # recomputed, same numbers
    open_sealed(file, "emb", (2, pipeline.SENTENCE_DIM))  # and rewritten whole
    assert pipeline.sentence_embeddings(texts[:1]).shape == (1, pipeline.SENTENCE_DIM)  # other texts, other file
