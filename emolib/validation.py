"""Does an emotion vector pick out its own emotion? Held-out classification, logit lens, intensity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from emolib.stats import bootstrap_mean_ci, permutation_pvalue
from emolib.vectors import EmotionVectors

__all__ = ["topk_hits", "classification_by_layer", "choose_layer", "logit_lens", "intensity_scores",
           "intensity_spearman"]


def topk_hits(scores: torch.Tensor, true_idx: torch.Tensor, k: int) -> np.ndarray:
    """Bool per row: is the true emotion among the ``k`` highest scores?"""
    top = scores.topk(k, dim=1).indices
    return (top == true_idx[:, None]).any(1).numpy()


def classification_by_layer(vectors: EmotionVectors, acts: torch.Tensor, labels: list[str], *,
                            seed: int = 0) -> pd.DataFrame:
    """Top-1 and top-5 accuracy of nearest-vector classification at every layer, with bootstrap CIs.

    ``acts`` is ``[n, n_layers, d]`` with the same layers as ``vectors``.
    """
    true = torch.tensor([vectors.emotions.index(x) for x in labels])
    rows = []
    for i, layer in enumerate(vectors.layers):
        scores = vectors.project(acts[:, i], layer)
        row = {"layer": layer}
        for k in (1, 5):
            hits = topk_hits(scores, true, k).astype(float)
            lo, hi = bootstrap_mean_ci(hits, seed=seed)
            row.update({f"top{k}": hits.mean(), f"top{k}_lo": lo, f"top{k}_hi": hi})
        rows.append(row)
    df = pd.DataFrame(rows)
    E = len(vectors.emotions)
    df["chance_top1"], df["chance_top5"] = 1 / E, min(5, E) / E
    return df


def choose_layer(table: pd.DataFrame) -> int:
    """The layer with the best validation top-1 (top-5 breaks ties, then the shallower layer)."""
    best = table.sort_values(["top1", "top5", "layer"], ascending=[False, False, True]).iloc[0]
    return int(best["layer"])


def logit_lens(model, vectors: EmotionVectors, layer: int, emotions: list[str], *, k: int = 8) -> dict[str, list[str]]:
    """Tokens each vector promotes most when read through the final norm and the unembedding."""
    hf = model.original_model
    norm = hf.model.norm
    out = {}
    with torch.no_grad():
        for e in emotions:
            w = hf.lm_head.weight  # vectors are stored in float32; the model may compute in bfloat16
            v = vectors.vector(e, layer, unit=True).to(device=w.device, dtype=w.dtype)
            logits = hf.lm_head(norm(v[None, None, :]))[0, 0].float()
            top = logits.topk(k).indices.tolist()
            out[e] = [model.tokenizer.decode([t]).strip() or repr(model.tokenizer.decode([t])) for t in top]
    return out


def intensity_scores(vectors: EmotionVectors, acts: torch.Tensor, layer: int, emotions: list[str]) -> np.ndarray:
    """Projection of ``acts [n, d]`` onto each of ``emotions``: ``[n, len(emotions)]``."""
    scores = vectors.project(acts, layer)
    return scores[:, [vectors.emotions.index(e) for e in emotions]].numpy()


def intensity_spearman(values, scores, *, n_perm: int = 10000, seed: int = 0) -> dict:
    """Spearman rho between a template's quantity and an emotion's projection, with a permutation p."""
    from scipy.stats import spearmanr

    rho = float(spearmanr(values, scores)[0])
    return {"rho": rho, "p": permutation_pvalue(values, scores, method="spearman", n_perm=n_perm, seed=seed)}
