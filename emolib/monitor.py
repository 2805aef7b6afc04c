"""The emotion monitor: per-token projections of a text onto chosen emotion vectors."""

from __future__ import annotations

from emolib.capture import capture
from emolib.chat import encode
from emolib.vectors import EmotionVectors

__all__ = ["token_monitor"]


def token_monitor(model, vectors: EmotionVectors, layer: int, texts: list[str], emotions: list[str]) -> list[dict]:
    """Per-token projections onto ``emotions`` for each text: dicts with ``tokens`` and ``scores [n, E]``
    (BOS excluded: capture pools from position 1)."""
    res = capture(model, texts, layers=[layer], pooling="all", progress=False)
    out = []
    idx = [vectors.emotions.index(e) for e in emotions]
    for text, acts in zip(texts, res.activations):
        ids = encode(model.tokenizer, text)[1:]
        scores = vectors.project(acts[:, 0].float(), layer)[:, idx].numpy()
        out.append({"tokens": [model.tokenizer.decode([t]) for t in ids], "scores": scores})
    return out
