"""From pooled activations to emotion directions.

``mean_difference``: an emotion's vector is the mean activation over its stories minus the mean of
all emotions' means (so every emotion weighs the same). ``neutral_components`` finds the top
principal components of emotionally neutral text that together explain a chosen fraction of its
variance; ``project_out`` removes them, so directions that carry topic, register or position
rather than emotion do not dominate. ``logistic_probe`` is an alternative extractor for
comparison: the weight vectors of a multinomial logistic regression.
"""

from __future__ import annotations

import torch

from emolib.vectors import EmotionVectors

__all__ = ["emotion_means", "mean_difference", "neutral_components", "project_out", "extract", "logistic_probe"]


def _label_index(labels: list[str], emotions: list[str]) -> torch.Tensor:
    pos = {e: i for i, e in enumerate(emotions)}
    unknown = sorted(set(labels) - set(pos))
    if unknown:
        raise ValueError(f"labels not among the emotions: {unknown[:5]}")
    missing = [e for e in emotions if e not in set(labels)]
    if missing:
        raise ValueError(f"no examples for emotions: {missing[:5]}")
    return torch.tensor([pos[x] for x in labels])


def emotion_means(acts: torch.Tensor, labels: list[str], emotions: list[str]) -> torch.Tensor:
    """``acts [n, L, d]`` -> per-emotion means ``[L, E, d]``."""
    if acts.ndim != 3 or len(labels) != acts.shape[0]:
        raise ValueError(f"acts must be [n, n_layers, d_model] with one label per row; got {tuple(acts.shape)} "
                         f"and {len(labels)} labels")
    idx = _label_index(labels, emotions)
    E = len(emotions)
    sums = torch.zeros(E, acts.shape[1], acts.shape[2], dtype=torch.float64)
    sums.index_add_(0, idx, acts.double())
    counts = torch.bincount(idx, minlength=E).double()
    return (sums / counts[:, None, None]).permute(1, 0, 2).float()


def mean_difference(acts: torch.Tensor, labels: list[str], emotions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Vectors ``[L, E, d]`` and their centre ``[L, d]`` (mean of the emotion means)."""
    means = emotion_means(acts, labels, emotions)
    center = means.mean(1)
    return means - center[:, None, :], center


def neutral_components(neutral_acts: torch.Tensor, *, variance: float = 0.5) -> list[torch.Tensor]:
    """Per layer, the fewest top principal components ``[k, d]`` of the neutral activations
    ``[m, L, d]`` explaining at least ``variance`` of their variance (``variance=0``: none)."""
    if not 0.0 <= variance < 1.0:
        raise ValueError(f"variance must be in [0, 1), got {variance}")
    out = []
    for layer in range(neutral_acts.shape[1]):
        x = neutral_acts[:, layer].double()
        x = x - x.mean(0)
        _, s, vh = torch.linalg.svd(x, full_matrices=False)
        ratio = (s ** 2) / (s ** 2).sum()
        k = 0 if variance == 0 else int(torch.searchsorted(torch.cumsum(ratio, 0), torch.tensor(variance, dtype=ratio.dtype)).item()) + 1
        out.append(vh[:k].float())
    return out


def project_out(vectors: torch.Tensor, components: list[torch.Tensor]) -> torch.Tensor:
    """Remove the span of each layer's orthonormal ``components [k, d]`` from ``vectors [L, E, d]``."""
    if len(components) != vectors.shape[0]:
        raise ValueError(f"{len(components)} component sets for {vectors.shape[0]} layers")
    out = vectors.clone()
    for layer, u in enumerate(components):
        if len(u):
            out[layer] -= (out[layer] @ u.T) @ u
    return out


def logistic_probe(acts: torch.Tensor, labels: list[str], emotions: list[str], *, C: float = 1.0,
                   seed: int = 0, max_iter: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic-regression weight vectors ``[L, E, d]`` (on standardised activations,
    mapped back to activation space) and the activation mean ``[L, d]`` used as centre."""
    from sklearn.linear_model import LogisticRegression

    idx = _label_index(labels, emotions).numpy()
    vecs, centers = [], []
    for layer in range(acts.shape[1]):
        x = acts[:, layer].double().numpy()
        mu, sd = x.mean(0), x.std(0) + 1e-8
        clf = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)
        clf.fit((x - mu) / sd, idx)
        w = clf.coef_ / sd  # a direction in activation space
        vecs.append(torch.from_numpy(w).float())
        centers.append(torch.from_numpy(mu).float())
    return torch.stack(vecs), torch.stack(centers)


def extract(acts: torch.Tensor, labels: list[str], emotions: list[str], *, layers: list[int],
            model: str, neutral_acts: torch.Tensor | None = None, variance: float = 0.5,
            method: str = "mean-diff", data_hash: str = "", seed: int = 0) -> EmotionVectors:
    """Emotion vectors for every captured layer, denoised when ``neutral_acts`` is given."""
    if method == "mean-diff":
        vecs, center = mean_difference(acts, labels, emotions)
    elif method == "logistic-probe":
        vecs, center = logistic_probe(acts, labels, emotions, seed=seed)
    else:
        raise ValueError(f"unknown method {method!r}; use 'mean-diff' or 'logistic-probe'")
    denoise: dict = {"variance": 0.0, "n_components": [0] * len(layers)}
    if neutral_acts is not None and variance > 0:
        comps = neutral_components(neutral_acts, variance=variance)
        vecs = project_out(vecs, comps)
        denoise = {"variance": variance, "n_components": [int(len(c)) for c in comps],
                   "n_neutral": int(neutral_acts.shape[0])}
    return EmotionVectors(list(emotions), list(layers), vecs, center, model, method, denoise, data_hash)
