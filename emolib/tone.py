"""Tone of steered text by an independent measure: human valence and arousal norms of its words.

A continuation's tone is the mean Warriner et al. (2013) valence and arousal (1-9) of its words
that appear in the norms. Word lookup: lower-cased alphabetic words (apostrophes kept inside a
word) looked up exactly in the norms' ``Word`` column, with no lemmatisation (the norms list
inflected forms for many words; words not listed are skipped). The measure comes from human raters,
not from the model.

:func:`tone_experiment` generates continuations of neutral prompts for every condition (unsteered,
each emotion x strength, each null direction x strength) on the batch axis, scores their tone and
fluency (perplexity under the unsteered model, repetition), and projects them, read by the
unsteered model, onto the emotion vectors. :func:`tone_summary` compares each emotion's shift with
the null distribution of shifts.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import pandas as pd
import torch

from emolib import unembed
from emolib.data import DATA_DIR
from emolib.generation import generate_batch, right_pad
from emolib.nulls import null_percentile, null_summary
from emolib.ratings import WARRINER_CSV
from emolib.scoring import repetition_rate
from emolib.stats import bootstrap_mean_ci

__all__ = ["word_norms", "text_tone", "batch_perplexity", "tone_experiment", "tone_summary", "projection_summary",
           "usable_alpha"]

_WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")


@lru_cache(maxsize=1)
def word_norms() -> dict[str, tuple[float, float]]:
    """``{word: (valence, arousal)}`` for every word of the Warriner norms."""
    df = pd.read_csv(DATA_DIR / WARRINER_CSV, keep_default_na=False, low_memory=False)
    return {str(w).lower(): (float(v), float(a)) for w, v, a in zip(df["Word"], df["V.Mean.Sum"], df["A.Mean.Sum"])}


def text_tone(text: str) -> tuple[float, float, int]:
    """``(mean valence, mean arousal, n rated words)`` of ``text``; NaN means when no word is rated."""
    norms = word_norms()
    rated = [norms[w] for w in _WORD.findall(text.lower()) if w in norms]
    if not rated:
        return float("nan"), float("nan"), 0
    v, a = np.mean(rated, axis=0)
    return float(v), float(a), len(rated)


def batch_perplexity(model, prompts: Sequence[Sequence[int]], conts: Sequence[Sequence[int]], *,
                     batch_size: int = 16, layer: int | None = None) -> tuple[np.ndarray, torch.Tensor | None]:
    """Perplexity of each continuation given its prompt under ``model`` as it is (unsteered): ``[n]``;
    with ``layer``, also the residual stream there averaged over each continuation's tokens
    ``[n, d_model]`` (float32; the same pass reads the continuation, in the context of its prompt).

    Right-padded batches through the body; the unembedding runs on the continuation's positions only
    (for a 262k vocabulary it is most of the cost).
    """
    from emolib.hooks import residual_edit

    hf = model.original_model
    device = next(hf.parameters()).device
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    out = np.full(len(prompts), np.nan)
    acts = torch.zeros(len(prompts), model.cfg.d_model) if layer is not None else None
    seen = {}

    def keep(resid):  # [b, width, d_model], left as it is
        seen["resid"] = resid.detach()
        return resid

    for s in range(0, len(prompts), batch_size):
        seqs = [list(p) + list(c) for p, c in zip(prompts[s: s + batch_size], conts[s: s + batch_size])]
        ids, mask = right_pad(seqs, pad)
        with torch.no_grad():
            with residual_edit(model, {} if layer is None else {layer: keep}):
                h = hf.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state  # [b, width, d]
            for i, (p, c) in enumerate(zip(prompts[s: s + batch_size], conts[s: s + batch_size])):
                if acts is not None:  # the continuation's tokens, or the prompt's last one if it is empty
                    span = slice(len(p), len(p) + len(c)) if len(c) else slice(len(p) - 1, len(p))
                    acts[s + i] = seen["resid"][i, span].float().mean(0).cpu()
                if len(c):
                    pos = torch.arange(len(p) - 1, len(p) + len(c) - 1, device=device)
                    lp = unembed.log_probs(hf, h[i, pos], torch.tensor(list(c), device=device))  # [len(c)]
                    out[s + i] = float(torch.exp(-lp.mean()))
    return out, acts


def tone_experiment(model, prompts: Sequence[Sequence[int]], conditions: pd.DataFrame, added: torch.Tensor, *,
                    layer: int, max_new_tokens: int, batch_size: int = 16, generation_batch_size: int = 128,
                    vectors=None, project: Sequence[str] = ()) -> pd.DataFrame:
    """One row per prompt x condition: continuation text, tone, fluency, and (with ``vectors``) the
    continuation's projection onto each emotion in ``project`` (columns ``proj_<emotion>``), read by
    the unsteered model.

    ``conditions`` has one row per condition (columns ``condition``, ``kind``, ``alpha``);
    ``added`` ``[n_conditions, d_model]`` is each condition's vector (zero: unsteered). Generation runs
    ``generation_batch_size`` rows at a time (a step's weights, the 262k-wide unembedding above all, are
    read once per batch), the perplexity pass ``batch_size``. In bfloat16 the batch's shape changes the
    rounding, so a different batch size can change a few greedy tokens; the same one gives the same text.
    """
    P, C = len(prompts), len(conditions)
    all_prompts = [p for _ in range(C) for p in prompts]
    rows_added = added.float().repeat_interleave(P, dim=0)
    conts = generate_batch(model, all_prompts, max_new_tokens=max_new_tokens, added=rows_added, layer=layer,
                           batch_size=generation_batch_size, progress="tone (continuations)")
    tok = model.tokenizer
    texts = [tok.decode(c, skip_special_tokens=True).strip() for c in conts]
    ppl, acts = batch_perplexity(model, all_prompts, conts, batch_size=batch_size,
                                 layer=layer if vectors is not None else None)
    rows = []
    for k, (text, c) in enumerate(zip(texts, conts)):
        cond = conditions.iloc[k // P]
        v, a, n = text_tone(text)
        rows.append({"prompt": k % P, "condition": cond.condition, "kind": cond.kind, "alpha": float(cond.alpha),
                     "text": text, "n_tokens": len(c), "valence": v, "arousal": a, "n_rated": n,
                     "perplexity": ppl[k], "repetition": repetition_rate(c)})
    df = pd.DataFrame(rows)
    if vectors is not None:
        scores = vectors.project(acts, layer)  # [n, n_emotions]
        for e in project:
            df[f"proj_{e}"] = scores[:, vectors.emotions.index(e)].numpy()
    return df


def tone_summary(df: pd.DataFrame, *, measures: Sequence[str] = ("valence", "arousal"), seed: int = 0) -> pd.DataFrame:
    """Per emotion x strength: mean shift from the unsteered continuation of the same prompt (CI over
    prompts), the null's mean and 95% band of the same shift over null directions, the percentile."""
    base = df[df.kind == "none"].set_index("prompt")
    out = []
    for m in measures:
        shift = df[m] - df.prompt.map(base[m])
        d = df.assign(shift=shift)
        null = d[d.kind == "null"].groupby(["condition", "alpha"])["shift"].mean()
        for (e, alpha), g in d[d.kind == "emotion"].groupby(["condition", "alpha"]):
            vals = g["shift"].dropna().to_numpy()
            nul = null.xs(alpha, level="alpha").dropna().to_numpy()
            lo, hi = bootstrap_mean_ci(vals, seed=seed) if len(vals) else (np.nan, np.nan)
            out.append({"emotion": e, "alpha": alpha, "measure": m, "shift": float(vals.mean()) if len(vals) else np.nan,
                        "ci_lo": lo, "ci_hi": hi, **null_summary(nul),
                        "minus_null": float(vals.mean() - nul.mean()) if len(vals) else np.nan,
                        "null_percentile": null_percentile(vals.mean(), nul) if len(vals) else np.nan})
    return pd.DataFrame(out)


def usable_alpha(df: pd.DataFrame, *, max_ppl_ratio: float = 2.0, max_repetition_increase: float = 0.2) -> float:
    """Largest |alpha| at which emotion-steered text (both signs, every smaller strength too) keeps its
    median perplexity within ``max_ppl_ratio`` of unsteered text and its median repetition within
    ``max_repetition_increase`` of it."""
    base = df[df.kind == "none"]
    ppl0, rep0 = base.perplexity.median(), base.repetition.median()
    steered = df[df.kind == "emotion"]
    best = 0.0
    for mag, g in sorted(steered.groupby(steered.alpha.abs()), key=lambda x: x[0]):
        if g.perplexity.median() <= max_ppl_ratio * ppl0 and g.repetition.median() <= rep0 + max_repetition_increase:
            best = float(mag)
        else:
            break
    return best


def projection_summary(df: pd.DataFrame, emotions: Sequence[str], *, seed: int = 0) -> pd.DataFrame:
    """Per emotion x strength: shift of the continuations' projection onto *that* emotion (columns
    ``proj_<emotion>``, read by the unsteered model) from the unsteered continuation of the same
    prompt, against the same shift under each null direction."""
    base = df[df.kind == "none"].set_index("prompt")
    out = []
    for e in emotions:
        col = f"proj_{e}"
        d = df.assign(shift=df[col] - df.prompt.map(base[col]))
        null = d[d.kind == "null"].groupby(["condition", "alpha"])["shift"].mean()
        for alpha, g in d[(d.kind == "emotion") & (d.condition == e)].groupby("alpha"):
            vals = g["shift"].to_numpy()
            nul = null.xs(alpha, level="alpha").to_numpy()
            lo, hi = bootstrap_mean_ci(vals, seed=seed)
            out.append({"emotion": e, "alpha": float(alpha), "shift": float(vals.mean()), "ci_lo": lo, "ci_hi": hi,
                        **null_summary(nul), "minus_null": float(vals.mean() - nul.mean()),
                        "null_percentile": null_percentile(vals.mean(), nul)})
    return pd.DataFrame(out)
