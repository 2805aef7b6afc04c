"""Does computing in bfloat16 change a conclusion? The same stories through the model in float32 and bfloat16.

The book computes the model in bfloat16 where the hardware does so natively (about twice the float32
speed on this CPU) and accumulates every pooled mean and statistic in float32 or wider. This module
checks that the cheaper arithmetic changes nothing the book concludes, on a fixed subset of emotions
(all their stories): the per-layer cosine between the two dtypes' emotion vectors, held-out top-1 of both
with bootstrap CIs, and the layer each would choose (leave-one-writer-out, as chapter 2 chooses it).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emolib.capture import capture
from emolib.pipeline import CorpusActivations, fit_vectors
from emolib.validation import classification_by_layer
from emolib.writers import choose_layer_on_writers, heldout_writer_validation

__all__ = ["DtypeAgreement", "agreement_emotions", "dtype_agreement"]


@dataclass(frozen=True)
class DtypeAgreement:
    dtypes: tuple[str, str]                 # (reference, compared): ("float32", "bfloat16")
    emotions: tuple[str, ...]
    layers: tuple[int, ...]
    cosine: np.ndarray                       # [n_layers, n_emotions]: cosine of the two dtypes' vectors
    heldout_top1: dict[str, np.ndarray]      # dtype -> [n_layers]
    heldout_ci: dict[str, np.ndarray]        # dtype -> [n_layers, 2]
    chosen_layer: dict[str, int]             # dtype -> layer chosen on held-out writers
    n_stories: int
    n_heldout: int

    def metrics(self) -> dict:
        ref, cmp_ = self.dtypes
        at = {d: self.layers.index(self.chosen_layer[ref]) for d in self.dtypes}
        return {
            "dtypes": list(self.dtypes), "emotions": list(self.emotions), "n_stories": self.n_stories,
            "n_heldout": self.n_heldout,
            "cosine_median_by_layer": [float(x) for x in np.median(self.cosine, 1)],
            "cosine_min_by_layer": [float(x) for x in self.cosine.min(1)],
            "cosine_median": float(np.median(self.cosine)), "cosine_min": float(self.cosine.min()),
            "heldout_top1_by_layer": {d: [float(x) for x in v] for d, v in self.heldout_top1.items()},
            "heldout_top1_at_layer": {d: float(self.heldout_top1[d][at[d]]) for d in self.dtypes},
            "heldout_top1_ci_at_layer": {d: [float(x) for x in self.heldout_ci[d][at[d]]] for d in self.dtypes},
            "layer_compared": self.chosen_layer[ref],
            "chosen_layer": dict(self.chosen_layer),
            "same_layer": self.chosen_layer[ref] == self.chosen_layer[cmp_],
            "max_abs_top1_difference": float(np.abs(self.heldout_top1[ref] - self.heldout_top1[cmp_]).max()),
        }


def agreement_emotions(emotions: Sequence[str], families: dict[str, str], *, seed: int = 0) -> list[str]:
    """One emotion per family (seeded), in ``emotions`` order: a subset that spans the whole space."""
    rng = random.Random(seed)
    by_family: dict[str, list[str]] = {}
    for e in emotions:
        by_family.setdefault(families[e], []).append(e)
    chosen = {rng.choice(v) for _, v in sorted(by_family.items())}
    return [e for e in emotions if e in chosen]


def _subset(ca: CorpusActivations, emotions: Sequence[str], neutral_rows: list[int]) -> CorpusActivations:
    keep = [i for i, s in enumerate(ca.stories) if s.emotion in set(emotions)]
    return CorpusActivations(list(emotions), [ca.stories[i] for i in keep], ca.story_acts[keep],
                             ca.neutral_acts[neutral_rows], ca.layers, ca.story_capture, ca.neutral_capture,
                             ca.data_hash)


def _evaluate(ca: CorpusActivations, *, variance: float, seed: int):
    vecs = fit_vectors(ca, splits=("fit", "val"), variance=variance, seed=seed)
    acts, labels = ca.subset(("heldout",))
    table = classification_by_layer(vecs, acts, labels, seed=seed)
    writers = heldout_writer_validation(ca, variance=variance, nested=False)
    return vecs, table, choose_layer_on_writers(writers.by_layer(seed=seed)), len(labels)


def dtype_agreement(ca: CorpusActivations, reference_model, *, compute_dtype: str, emotions: Sequence[str],
                    neutral_texts: list[str],
                    n_neutral: int = 60, variance: float = 0.5, start: int, batch_size: int = 16,
                    seed: int = 0) -> DtypeAgreement:
    """Compare ``ca`` (the book's capture, computed in ``compute_dtype``) with ``reference_model`` (the same model in
    the other dtype) on ``emotions``' stories and ``n_neutral`` of the neutral passages ``neutral_texts``
    (the texts of ``ca.neutral_acts``' rows, in order). Only the reference captures are computed here."""
    rows = sorted(random.Random(seed).sample(range(len(neutral_texts)), min(n_neutral, len(neutral_texts))))
    book = _subset(ca, emotions, rows)
    ref_dtype = str(next(reference_model.parameters()).dtype).removeprefix("torch.")
    book_dtype = compute_dtype
    if ref_dtype == book_dtype:
        raise ValueError(f"the reference model computes in {ref_dtype}, as the book does: load it in the other dtype")
    layers = list(ca.layers)
    s_acts = capture(reference_model, [s.text for s in book.stories], layers=layers, start=start,
                     batch_size=batch_size).activations
    n_acts = capture(reference_model, [neutral_texts[i] for i in rows], layers=layers, start=start,
                     batch_size=batch_size).activations
    ref = CorpusActivations(book.emotions, book.stories, s_acts, n_acts, book.layers, book.story_capture,
                            book.neutral_capture, book.data_hash)
    out = {}
    for name, c in ((ref_dtype, ref), (book_dtype, book)):
        out[name] = _evaluate(c, variance=variance, seed=seed)
    v_ref, v_book = out[ref_dtype][0].vectors, out[book_dtype][0].vectors      # [L, E, d]
    cos = torch.nn.functional.cosine_similarity(v_ref.double(), v_book.double(), dim=-1).numpy()
    return DtypeAgreement(
        dtypes=(ref_dtype, book_dtype), emotions=tuple(emotions), layers=tuple(layers), cosine=cos,
        heldout_top1={d: out[d][1].top1.to_numpy() for d in out},
        heldout_ci={d: out[d][1][["top1_lo", "top1_hi"]].to_numpy() for d in out},
        chosen_layer={d: out[d][2] for d in out}, n_stories=len(book.stories), n_heldout=out[ref_dtype][3])
