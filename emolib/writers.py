"""Held-out-writer validation: do the vectors recognise an emotion in a story by a writer they never saw?

A held-out story by a writer whose other stories were in the fit shares that writer's habits with the
training data; a story by an unseen writer does not. Leave-one-writer-out (LOWO) fits the vectors on every
story except one crossed writer's (``emolib.data.CROSSED_WRITERS``: each wrote one story for every
emotion) and classifies that writer's stories, at every layer.

Two numbers come out, and they answer different questions:

- the **LOWO curve** (accuracy by layer, averaged over the held-out writers) is what the book uses to
  *choose* its layer: the layer is picked on writers, not on stories of writers already in the fit;
- the **nested estimate** is the accuracy to *report* at a chosen layer: for each held-out writer the
  layer is chosen by LOWO over the *other* writers only, then that writer is scored at it, so no writer's
  stories help choose the layer it is scored at.

Intervals are percentile bootstraps over emotions (each emotion's stories by all held-out writers are
resampled together), so stories of one emotion are not treated as independent evidence.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emolib.data import CROSSED_WRITERS
from emolib.extraction import mean_difference, neutral_components, project_out
from emolib.progress import report

__all__ = ["WriterValidation", "heldout_writer_validation", "choose_layer_on_writers"]

_SPLITS = ("fit", "val")  # the held-out stories (split "heldout") play no part here


@dataclass(frozen=True)
class WriterValidation:
    """Leave-one-writer-out results over ``layers``."""

    layers: tuple[int, ...]
    writers: tuple[str, ...]
    hits1: np.ndarray          # [n_writers, n_layers, n_emotions] bool: writer w's story of emotion e ranked first
    hits5: np.ndarray          # [n_writers, n_layers, n_emotions] bool: ... among the top 5
    nested_layer: tuple[int, ...]  # per held-out writer: the layer chosen by LOWO over the other writers
    emotions: tuple[str, ...]

    def by_layer(self, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
        """Per layer: top-1/top-5 averaged over writers, bootstrap CIs over emotions, and the per-writer range."""
        rows = []
        for li, layer in enumerate(self.layers):
            row = {"layer": layer}
            for k, hits in (("top1", self.hits1), ("top5", self.hits5)):
                per_emotion = hits[:, li, :].mean(0)            # [n_emotions]: share of writers right
                lo, hi = _boot(per_emotion, n_boot=n_boot, seed=seed)
                per_writer = hits[:, li, :].mean(1)
                row.update({k: float(per_emotion.mean()), f"{k}_lo": lo, f"{k}_hi": hi,
                            f"{k}_writer_min": float(per_writer.min()), f"{k}_writer_max": float(per_writer.max())})
            rows.append(row)
        df = pd.DataFrame(rows)
        E = len(self.emotions)
        df["chance_top1"], df["chance_top5"] = 1 / E, min(5, E) / E
        return df

    def per_writer(self, layer: int) -> pd.DataFrame:
        """Top-1 and top-5 of each held-out writer at ``layer``."""
        li = self.layers.index(layer)
        return pd.DataFrame({"writer": self.writers, "top1": self.hits1[:, li].mean(1),
                             "top5": self.hits5[:, li].mean(1)})

    def nested(self, *, n_boot: int = 2000, seed: int = 0) -> dict:
        """Each writer scored at the layer chosen without it: the unbiased held-out-writer accuracy."""
        idx = [self.layers.index(layer) for layer in self.nested_layer]
        out = {}
        for k, hits in (("top1", self.hits1), ("top5", self.hits5)):
            h = np.stack([hits[w, li] for w, li in enumerate(idx)])   # [n_writers, n_emotions]
            per_emotion = h.mean(0)
            lo, hi = _boot(per_emotion, n_boot=n_boot, seed=seed)
            out[k] = float(per_emotion.mean())
            out[f"{k}_ci"] = [lo, hi]
        out["layers"] = list(self.nested_layer)
        out["n_stories"] = int(self.hits1.shape[0] * self.hits1.shape[2])
        return out


def _boot(per_emotion: np.ndarray, *, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = per_emotion[rng.integers(0, len(per_emotion), size=(n_boot, len(per_emotion)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def choose_layer_on_writers(table: pd.DataFrame) -> int:
    """The layer with the best LOWO top-1 (top-5 breaks ties, then the shallower layer)."""
    best = table.sort_values(["top1", "top5", "layer"], ascending=[False, False, True]).iloc[0]
    return int(best["layer"])


def _score(acts: torch.Tensor, labels: list[str], fit_acts: torch.Tensor, fit_labels: list[str],
           emotions: list[str], comps: list[torch.Tensor] | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 / top-5 hits ``[n_layers, n_test]`` of nearest-vector classification (as ``EmotionVectors.project``)."""
    vecs, center = mean_difference(fit_acts, fit_labels, emotions)        # [L, E, d], [L, d]
    if comps is not None:
        vecs = project_out(vecs, comps)
    unit = vecs / vecs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    scores = torch.einsum("nld,led->lne", acts.float() - center[None], unit)   # [L, n, E]
    true = torch.tensor([emotions.index(x) for x in labels])
    top = scores.topk(min(5, len(emotions)), dim=-1).indices                     # [L, n, 5]
    hits1 = (top[..., 0] == true[None]).numpy()
    hits5 = (top == true[None, :, None]).any(-1).numpy()
    return hits1, hits5


def heldout_writer_validation(ca, *, variance: float = 0.5, writers: Sequence[str] = CROSSED_WRITERS,
                              nested: bool = True) -> WriterValidation:
    """Leave each of ``writers`` out in turn (``ca``: a ``pipeline.CorpusActivations``).

    The fit uses every train story (fit and val splits, batch and crossed writers) except the held-out
    writer's; the neutral components are the same for every fold (they come from neutral text only).
    With ``nested``, each held-out writer's layer is also chosen by LOWO over the remaining writers.
    """
    writers = tuple(w for w in writers if any(s.writer == w for s in ca.stories))
    if len(writers) < 2:
        raise ValueError("held-out-writer validation needs at least two crossed writers in the corpus")
    emotions = list(ca.emotions)
    comps = neutral_components(ca.neutral_acts, variance=variance) if variance > 0 else None
    layers = tuple(ca.layers)

    def fold(test: str, also_out: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        fit_idx = ca.indices(_SPLITS, exclude_writers={test, *also_out})
        test_idx = ca.indices(_SPLITS, writers={test})
        by_emotion = {ca.stories[i].emotion: i for i in test_idx}
        missing = [e for e in emotions if e not in by_emotion]
        if missing:
            raise ValueError(f"writer {test} has no story for {missing[:3]}: a crossed writer covers every emotion")
        order = [by_emotion[e] for e in emotions]          # one story per emotion, in emotion order
        return _score(ca.story_acts[order], emotions, ca.story_acts[fit_idx],
                      [ca.stories[i].emotion for i in fit_idx], emotions, comps)

    outer = []
    for i, w in enumerate(writers):
        outer.append(fold(w))
        report("held-out writers", i + 1, len(writers))
    hits1 = np.stack([h1 for h1, _ in outer])      # [W, L, E]
    hits5 = np.stack([h5 for _, h5 in outer])
    chosen = []
    for i, w in enumerate(writers):
        if not nested:
            chosen.append(layers[int(np.argmax(hits1.mean((0, 2))))])
            continue
        inner = [fold(v, (w,)) for v in writers if v != w]
        t1 = np.mean([h1.mean(1) for h1, _ in inner], axis=0)   # [L]
        t5 = np.mean([h5.mean(1) for _, h5 in inner], axis=0)
        table = pd.DataFrame({"layer": layers, "top1": t1, "top5": t5})
        chosen.append(choose_layer_on_writers(table))
        report("nested layer choice", i + 1, len(writers))
    return WriterValidation(layers, writers, hits1, hits5, tuple(chosen), tuple(emotions))
