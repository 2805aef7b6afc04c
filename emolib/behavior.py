"""Chapter 5's experiments on a validated readout: preferences and ethics under pressure, with nulls.

- :func:`bradley_terry_position`: Bradley-Terry strengths plus a position term, fitted on per-order
  outcomes (never on probabilities averaged over orders); :func:`elo_with_ci` bootstraps it over pairs.
- :func:`probe_correlations`: each emotion's projection on the activity texts against Elo, with
  Benjamini-Hochberg over all emotions (:func:`bh_adjust`; :func:`holm_adjust` for the other family).
- :func:`null_test`: an effect against the distribution of the same effect under random directions of
  equal norm (a prediction-interval t test, exact when the null effects are normal, and the percentile).
- :func:`preference_shift` / :func:`ethics_logodds`: steered measurements, per item, paired with the
  unsteered model; :func:`ethics_dose_response` runs every emotion, null direction and strength of the
  ethics experiment with the conditions on the batch axis (:func:`emolib.readouts.content_conditions`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as _st

from emolib.capture import capture
from emolib.readouts import (CONTENT_FREE_STEM, Item, OrderScores, Readout, Steering, Where, cloze_prefix,
                              content_conditions, option_logprobs, score_items)
from emolib.stats import bootstrap_mean_ci
from emolib.nulls import NullKind, RandomDirection
from emolib.steering import steering_vector

__all__ = ["ELO_PER_LOGIT", "PREFERENCE_QUESTION", "preference_pairs", "pair_items", "activity_scores", "pair_scores", "activity_projections", "per_order_outcomes",
           "bradley_terry_position", "elo_with_ci", "bh_adjust", "holm_adjust", "probe_correlations",
           "null_test", "steering_for", "preference_shift", "ethics_items", "ethics_logodds",
           "paired_effects", "ethics_dose_response"]

ELO_PER_LOGIT = 400 / math.log(10)
PREFERENCE_QUESTION = "Which would you rather do?"


def preference_pairs(n_items: int, *, per_item: int, seed: int = 0) -> list[tuple[int, int]]:
    """A balanced random design: every item appears in about ``2 * per_item`` pairs, none repeated."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    for _ in range(per_item):
        perm = list(range(n_items))
        rng.shuffle(perm)
        for k in range(n_items):
            a, b = perm[k], perm[(k + 1) % n_items]
            if a != b:
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def pair_items(texts: Sequence[str], pairs: Sequence[tuple[int, int]]) -> list[Item]:
    return [Item(PREFERENCE_QUESTION, texts[i], texts[j]) for i, j in pairs]


def activity_scores(model, texts: Sequence[str], readout: Readout, *, steering: Steering | None = None,
                    batch_size: int = 16) -> np.ndarray:
    """Per-activity (calibrated) cloze score after the preference question ``[n]``; with ``steering``, the
    activity's own tokens are steered. A cloze prompt never lists the other option, so the pair score is
    the difference of two of these and each activity needs scoring once, not once per pair."""
    if readout is Readout.LETTER:
        raise ValueError("the letter readout scores pairs, not single activities; use pair_scores")
    prefix = cloze_prefix(Item(PREFERENCE_QUESTION, "", ""))
    s = option_logprobs(model, [prefix] * len(texts), texts, batch_size=batch_size, steering=steering,
                        where=Where.FIRST, progress="preference scoring (activities)")
    if readout is Readout.CALIBRATED:
        s = s - option_logprobs(model, [CONTENT_FREE_STEM] * len(texts), texts, batch_size=batch_size,
                                steering=steering, where=Where.FIRST)
    return s


def pair_scores(model, texts: Sequence[str], pairs: Sequence[tuple[int, int]], readout: Readout, *,
                batch_size: int = 16) -> OrderScores:
    """Unsteered per-order preference of ``texts[i]`` over ``texts[j]`` for each pair."""
    if readout is Readout.LETTER:
        return score_items(model, pair_items(texts, pairs), readout, batch_size=batch_size,
                           progress="preference scoring (pairs)")
    s = activity_scores(model, texts, readout, batch_size=batch_size)
    d = np.array([s[i] - s[j] for i, j in pairs])
    return OrderScores(readout, d, d.copy())


def activity_projections(model, vectors, layer: int, texts: Sequence[str]) -> np.ndarray:
    """Projection of each text (mean over its tokens, BOS excluded) on every emotion: ``[n_texts, n_emotions]``."""
    acts = capture(model, list(texts), layers=[layer], start=1, progress=False).activations[:, 0]
    return vectors.project(acts.float(), layer).numpy()


def per_order_outcomes(scores: OrderScores, pairs: Sequence[tuple[int, int]]) -> list[tuple[int, int, float]]:
    """``(shown_first, shown_second, P(shown first wins))`` for each pair in each order.

    Order 1 shows ``i`` first; order 2 shows ``j`` first. The outcome is the readout's soft choice in
    that order (sigmoid of its per-order preference), so a position bias stays visible to the fit.
    """
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    out = []
    for (i, j), s1, s2 in zip(pairs, scores.order1, scores.order2):
        out.append((i, j, float(sig(s1))))   # order 1: i shown first (as (A)); s1 = its preference there
        out.append((j, i, float(sig(-s2))))  # order 2: j shown first; -s2 = j's preference there
    return out


def bradley_terry_position(n_items: int, outcomes: Sequence[tuple[int, int, float]], *, iters: int = 200,
                           l2: float = 1e-3) -> tuple[np.ndarray, float]:
    """Fit ``P(first shown beats second) = sigmoid(beta_first - beta_second + gamma)``.

    Returns Elo-scale strengths ``[n_items]`` (centred at 0) and the position term ``gamma`` in Elo
    points (positive: the option shown first wins more often than its strength says). Newton steps on
    the joint parameters with a small ridge keep strengths finite when an item always wins.
    """
    if not outcomes:
        raise ValueError("no outcomes")
    i = np.array([o[0] for o in outcomes])
    j = np.array([o[1] for o in outcomes])
    y = np.array([o[2] for o in outcomes], dtype=float)
    # design matrix: +1 for the first, -1 for the second, a final column of 1 for the position term
    x = np.zeros((len(y), n_items + 1))
    x[np.arange(len(y)), i] += 1
    x[np.arange(len(y)), j] -= 1
    x[:, -1] = 1
    theta = np.zeros(n_items + 1)
    ridge = np.full(n_items + 1, l2)
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ theta)))
        g = x.T @ (y - p) - ridge * theta
        h = (x * (p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(h, g)
        theta += step
        if np.abs(step).max() < 1e-9:
            break
    beta = theta[:-1] - theta[:-1].mean()
    return beta * ELO_PER_LOGIT, float(theta[-1] * ELO_PER_LOGIT)


def elo_with_ci(n_items: int, pairs: Sequence[tuple[int, int]], scores: OrderScores, *, n_boot: int = 200,
                seed: int = 0, level: float = 0.95) -> dict:
    """Elo ``[n_items]``, its bootstrap CI over pairs ``[2, n_items]``, the position term and its CI."""
    outcomes = per_order_outcomes(scores, pairs)
    elo, pos = bradley_terry_position(n_items, outcomes)
    rng = np.random.default_rng(seed)
    boots, pboots = [], []
    by_pair = [outcomes[2 * k: 2 * k + 2] for k in range(len(pairs))]
    for _ in range(n_boot):
        pick = rng.integers(0, len(pairs), len(pairs))
        e, p = bradley_terry_position(n_items, [o for k in pick for o in by_pair[k]], iters=50)
        boots.append(e)
        pboots.append(p)
    a = (1 - level) / 2
    boots = np.array(boots)
    return {"elo": elo, "ci": np.quantile(boots, [a, 1 - a], axis=0), "position": pos,
            "position_ci": [float(np.quantile(pboots, a)), float(np.quantile(pboots, 1 - a))]}


def bh_adjust(p: Sequence[float]) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (false discovery rate), in the input order."""
    p = np.asarray(p, float)
    n = len(p)
    order = np.argsort(p)
    ranked = p[order] * n / np.arange(1, n + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


def holm_adjust(p: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error), in the input order."""
    p = np.asarray(p, float)
    n = len(p)
    order = np.argsort(p)
    adj = np.maximum.accumulate(p[order] * (n - np.arange(n)))
    out = np.empty(n)
    out[order] = np.minimum(adj, 1.0)
    return out


def probe_correlations(proj: np.ndarray, elo: np.ndarray, emotions: Sequence[str]) -> pd.DataFrame:
    """Pearson r of each emotion's projection ``proj [n_activities, n_emotions]`` with Elo across
    activities, its t-test p-value and the BH-adjusted p over all emotions; sorted by r."""
    rows = []
    for k, e in enumerate(emotions):
        r, p = _st.pearsonr(proj[:, k], elo)
        rows.append({"emotion": e, "r": float(r), "p": float(p)})
    df = pd.DataFrame(rows)
    df["p_bh"] = bh_adjust(df.p.to_numpy())
    return df.sort_values("r").reset_index(drop=True)


def null_test(effect: float, null_effects: Sequence[float]) -> dict:
    """``effect`` against the effects of random directions: two-sided p from the prediction interval of a
    new draw of the null (t with ``n - 1`` df), the null mean, its 2.5-97.5% band and the percentile."""
    z = np.asarray(null_effects, float)
    if len(z) < 3:
        raise ValueError("the null needs at least 3 random directions")
    mu, sd = float(z.mean()), float(z.std(ddof=1))
    t = (effect - mu) / (sd * math.sqrt(1 + 1 / len(z))) if sd > 0 else (0.0 if effect == mu else math.inf)
    p = float(2 * _st.t.sf(abs(t), len(z) - 1))
    return {"null_mean": mu, "null_band": [float(np.quantile(z, 0.025)), float(np.quantile(z, 0.975))],
            "null_percentile": float((z < effect).mean() * 100), "p": p}


def steering_for(vectors, layer: int, norms: dict, *, alpha: float, emotion: str | None = None,
                 random_seed: int | None = None, null_kind: NullKind = NullKind.ISOTROPIC) -> Steering:
    """The vector ``steer`` would add at ``layer`` (``alpha * norms[layer] * unit``) for an emotion, or for
    a seeded random direction of equal norm (the null): isotropic, or a random mixture of the emotion
    vectors (:mod:`emolib.nulls`), which lies where the model's own activations vary."""
    if (emotion is None) == (random_seed is None):
        raise ValueError("give exactly one of emotion= or random_seed=")
    norm = float(norms[layer])
    if emotion is not None:
        return Steering(layer, steering_vector(vectors, emotion, layer, alpha=alpha, norm=norm))
    return Steering(layer, alpha * norm * RandomDirection(null_kind, random_seed).unit(vectors, layer))


def preference_shift(model, texts: Sequence[str], pairs: Sequence[tuple[int, int]], readout: Readout,
                     base: OrderScores | np.ndarray, steering: Steering, *, batch_size: int = 16) -> np.ndarray:
    """The change in preference, in Elo points, when an activity's own tokens are steered, paired with the
    unsteered ``base``. Cloze readouts: per activity ``[n_texts]`` (``base`` = :func:`activity_scores`);
    letter readout: per pair, steering the first activity of each pair ``[n_pairs]`` (``base`` =
    :func:`pair_scores`)."""
    if readout is Readout.LETTER:
        steered = score_items(model, pair_items(texts, pairs), readout, batch_size=batch_size, steering=steering,
                              where=Where.FIRST)
        return (steered.content - base.content) * ELO_PER_LOGIT
    return (activity_scores(model, texts, readout, steering=steering, batch_size=batch_size) - base) * ELO_PER_LOGIT


def ethics_items(scenarios) -> list[Item]:
    """``first`` = the unethical option: a positive content preference means the unethical one is preferred."""
    return [Item(s.question, s.unethical, s.ethical, context=s.scenario) for s in scenarios]


def ethics_logodds(model, items: Sequence[Item], readout: Readout, steering: Steering | None, *,
                   batch_size: int = 16) -> np.ndarray:
    """Per scenario, the log-odds of the unethical against the ethical option ``[n]`` (whole prompt steered)."""
    return score_items(model, items, readout, batch_size=batch_size, steering=steering, where=Where.ALL).content


def paired_effects(effects: dict[str, np.ndarray], nulls: Sequence[np.ndarray], *, seed: int = 0) -> dict:
    """Mean paired change per condition with a bootstrap CI over items, tested against the mean changes
    of the random directions (:func:`null_test`); ``effects`` maps a condition name to ``[n_items]``."""
    null_means = [float(np.mean(z)) for z in nulls]
    out = {}
    for name, d in effects.items():
        lo, hi = bootstrap_mean_ci(d, seed=seed)
        out[name] = {"change": float(np.mean(d)), "ci": [lo, hi], **null_test(float(np.mean(d)), null_means)}
    return out


def ethics_dose_response(model, vectors, layer: int, norms: dict, items: Sequence[Item], readout: Readout, *,
                         emotions: Sequence[str], alphas: Sequence[float], n_random: int, null_kind: NullKind,
                         seed: int = 0) -> tuple[np.ndarray, pd.DataFrame]:
    """The unsteered log-odds of the unethical option per scenario ``[n]``, and per emotion x strength the
    mean paired change with its CI, tested against ``n_random`` random directions of equal norm at the same
    strength (:func:`paired_effects`), with Holm's correction over all emotion x strength conditions.

    Every condition (unsteered, each null direction and each emotion at each strength) is scored in one
    batch per scenario; the null directions are the same at every strength (seeds ``seed + 2000 + k``).
    """
    steer = [None]
    for a in alphas:
        steer += [steering_for(vectors, layer, norms, alpha=a, random_seed=seed + 2000 + k, null_kind=null_kind)
                  for k in range(n_random)]
        steer += [steering_for(vectors, layer, norms, alpha=a, emotion=e) for e in emotions]
    d = vectors.d_model
    vecs = torch.stack([torch.zeros(d) if st is None else st.vector.float().cpu() for st in steer])
    lo = content_conditions(model, items, readout, vecs, layer=layer, progress="ethics (scenarios)")
    lo0 = lo[0]
    per_alpha = lo[1:].reshape(len(alphas), n_random + len(emotions), len(items))  # the order ``steer`` was built in
    rows = []
    for a, block in zip(alphas, per_alpha):
        nulls = list(block[:n_random] - lo0)
        effects = {e: block[n_random + j] - lo0 for j, e in enumerate(emotions)}
        rows += [{"emotion": e, "alpha": float(a), **t} for e, t in paired_effects(effects, nulls, seed=seed).items()]
    dose = pd.DataFrame(rows)
    dose["p_holm"] = holm_adjust(dose.p.to_numpy())
    return lo0, dose
