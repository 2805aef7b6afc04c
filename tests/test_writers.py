"""Held-out-writer validation on planted data: the signal's layer is found, nesting never peeks, noise is chance."""

from __future__ import annotations

import numpy as np
import torch

from emolib.data import CROSSED_WRITERS, Story
from emolib.pipeline import CorpusActivations
from emolib.writers import heldout_writer_validation

E, L, D = 12, 3, 32


def corpus(*, signal_layer: int, writer_style: float, seed: int = 0, shuffle: bool = False) -> CorpusActivations:
    g = torch.Generator().manual_seed(seed)
    emotions = [f"e{i}" for i in range(E)]
    means = torch.randn(E, D, generator=g) * 3
    style = {w: torch.randn(D, generator=g) * writer_style for w in CROSSED_WRITERS[:4]}
    stories, rows = [], []
    rng = np.random.default_rng(seed)
    for w in style:
        labels = rng.permutation(emotions) if shuffle else emotions
        for j, e in enumerate(emotions):
            x = torch.randn(L, D, generator=g)
            x += style[w]
            x[signal_layer] += means[emotions.index(labels[j])]
            stories.append(Story(id=f"{e}-{w}", emotion=e, split="train", writer=w, topic="commute",
                                 person="first", text="x" * 20))
            rows.append(x)
    acts = torch.stack(rows)
    neutral = torch.randn(40, L, D, generator=g)
    return CorpusActivations(emotions, stories, acts, neutral, tuple(range(L)), None, None, "h")


def test_planted_signal_layer_is_found_and_scored_high():
    wv = heldout_writer_validation(corpus(signal_layer=1, writer_style=2.0), variance=0.0)
    table = wv.by_layer()
    assert table.set_index("layer").top1.idxmax() == 1
    assert table.set_index("layer").loc[1, "top1"] > 0.8
    assert set(wv.nested_layer) == {1}
    nested = wv.nested()
    assert nested["top1"] > 0.8 and nested["top1_ci"][0] <= nested["top1"] <= nested["top1_ci"][1]
    assert nested["n_stories"] == 4 * E


def test_shuffled_labels_give_chance():
    wv = heldout_writer_validation(corpus(signal_layer=1, writer_style=0.5, shuffle=True), variance=0.0)
    nested = wv.nested()
    assert nested["top1"] < 0.25          # chance is 1/12; 48 stories
    assert nested["top1_ci"][0] <= 1 / E + 0.05


def test_held_out_writer_is_never_in_the_fit(monkeypatch):
    """A writer's stories must not shape the vectors that score them: make that writer's stories carry a
    huge label-specific signal nobody else has; with leakage its accuracy would be perfect."""
    ca = corpus(signal_layer=1, writer_style=0.0, shuffle=True, seed=3)
    w0 = CROSSED_WRITERS[0]
    for i, s in enumerate(ca.stories):
        if s.writer == w0:
            ca.story_acts[i, 2] = 0.0
            ca.story_acts[i, 2, ca.emotions.index(s.emotion)] = 100.0
    wv = heldout_writer_validation(ca, variance=0.0)
    assert wv.per_writer(2).set_index("writer").loc[w0, "top1"] < 0.5
