"""Self-report: does steering with an emotion make the model more likely to name that emotion?

A neutral context ends in a slot for a feeling ("Right now I feel"); we score the whole word of
each of the emotions (multi-token words: the sum of their tokens' log-probabilities) as the next
words, with the context steered (every context position except BOS; the word itself is read
unsteered, as a reader of the steered state). This is full-sequence scoring, not generation:

1. one pass per batch of conditions over the shared context (the rows differ only in the vector
   added at the layer) gives every word's first-token log-probability from the last position;
2. one cached pass over the later tokens of the multi-token words (the steered context's KV cache
   repeated per word) gives the rest.

Summaries (:func:`summarise`): the own-word change in log-probability against the null of random
directions of equal norm (percentile, fraction of emotions beyond the null's 95th percentile with
a Wilson interval), the own word's rank among all words, and a steered-emotion x word-raised
matrix with a diagonal-dominance score tested against shuffled labels.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from emolib import unembed
from emolib.hooks import fan_out
from emolib.chat import encode, format_chat
from emolib.progress import report

__all__ = ["BASE_TEMPLATES", "CHAT_QUESTION", "feeling_contexts", "word_ids", "WordScores", "score_words", "SelfReport",
           "wilson_interval", "diagonal_dominance", "PASS_P", "null_pvalue", "null_calibration", "summarise"]

BASE_TEMPLATES = ("Right now I feel", "She looked up and said that she felt", "He sat by the window. He feels",
                  "How do you feel today? I feel")
CHAT_QUESTION = "In one word, how do you feel right now?"


def feeling_contexts(tokenizer, *, chat: bool, n: int) -> list[list[int]]:
    """``n`` contexts (token ids, one BOS) ending where a feeling word comes next.

    The instruct model gets the question in its chat template with the answer begun ("I feel");
    the base model gets plain narrative templates.
    """
    if chat:
        start = format_chat(tokenizer, [{"role": "user", "content": CHAT_QUESTION}])
        texts = [start + s for s in ("I feel", "Right now I feel", "Honestly, I feel", "Today I feel")]
    else:
        texts = list(BASE_TEMPLATES)
    if not 1 <= n <= len(texts):
        raise ValueError(f"n must be 1..{len(texts)}")
    return [encode(tokenizer, t) for t in texts[:n]]


def word_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Token ids of each word as it follows the context (with its leading space)."""
    return [list(tokenizer(" " + w, add_special_tokens=False).input_ids) for w in words]


def _later_subsets(hf, hs: dict, words, multi, k: int):
    """Per later token of each multi-token word, the ``k`` most likely tokens under the unsteered
    context (the target always among them), their unembedding rows and the probability mass they hold.

    ``hs[word index]`` ``[1, len-1, d_model]``: final hidden states of the unsteered pass over the word.
    """
    subsets, covered = {}, []
    for kk in multi:
        w = words[kk]
        for p in range(len(w) - 1):
            full = torch.log_softmax(unembed.logits(hf, hs[kk][0, p][None]), -1)[0]  # [vocab]
            top = torch.topk(full, min(k, full.shape[0])).indices
            if w[p + 1] not in top:
                top[-1] = w[p + 1]
            covered.append(float(full[top].exp().sum()))
            target = int((top == w[p + 1]).nonzero()[0, 0])
            subsets[(kk, p)] = (hf.lm_head.weight[top].float(), target)  # [k, d_model]
    return subsets, min(covered)


@dataclass(frozen=True)
class WordScores:
    """Whole-word log-probabilities ``logp`` ``[n_conditions, n_words]`` (float32), and the smallest
    share of the unsteered next-token mass the later-token normalisers kept (1.0 when exact)."""

    logp: torch.Tensor
    later_coverage: float


def score_words(model, context: Sequence[int], words: Sequence[Sequence[int]], *, added: torch.Tensor, layer: int,
                batch_size: int = 32, later_vocab: int | None = 4096) -> WordScores:
    """Whole-word log-probabilities after ``context`` under each condition.

    ``added`` ``[n_conditions, d_model]`` is the vector added at ``layer`` on the context's positions
    1.. (zero rows: unsteered). The first token of every word is normalised over the whole vocabulary.
    The later tokens of multi-token words (a word's own continuation, e.g. "-stricken") are normalised
    over the ``later_vocab`` tokens most likely at that position under the unsteered context, which
    :attr:`WordScores.later_coverage` says hold nearly all the mass; ``None`` normalises them over the
    whole vocabulary too (exact, and for a 262k vocabulary most of the cost).
    """
    hf = model.original_model
    device = next(hf.parameters()).device
    T = len(context)
    first = torch.tensor([w[0] for w in words], device=device)
    multi = [k for k, w in enumerate(words) if len(w) > 1]
    bias = getattr(hf.lm_head, "bias", None)  # the bridge's wrapper shows a zero bias
    if bias is not None and bool(bias.abs().max() > 0):
        later_vocab = None  # the subset shortcut assumes a bias-free unembedding
    subsets, coverage = None, 1.0
    out = []

    def run(a: torch.Tensor):  # a: [C, d_model] -> (scores [C, W], later hidden states or None)
        # The layers up to ``layer`` are the same under every condition: they run once (fan_out).
        C = a.shape[0]
        with fan_out(model, layer, a, skip_first=True):
            res = hf.model(input_ids=torch.tensor([list(context)], device=device), use_cache=bool(multi))
        scores = unembed.log_probs(hf, res.last_hidden_state[:, -1], first[None, :].expand(C, -1))  # [C, W]
        if not multi:
            return scores, None
        # One cached pass per word length: no row pads, so the pass holds exactly the later tokens' inputs.
        # The words are not steered; they run as M rows up to ``layer`` and C * M rows after it, where
        # the cache holds each condition's steered context (row c * M + j: condition c, word j).
        hs = {}
        groups = sorted({len(words[k]) for k in multi})
        for n, length in enumerate(groups):
            ks = [k for k in multi if len(words[k]) == length]
            M = len(ks)
            cache = res.past_key_values if n == len(groups) - 1 else copy.deepcopy(res.past_key_values)
            cache.batch_repeat_interleave(M)
            inp = torch.tensor([words[k][:-1] for k in ks], device=device)  # [M, length - 1]
            pos = (T + torch.arange(length - 1, device=device))[None, :]
            # one causal mask for every row ([1, 1, q, T + q], True = attend): it must broadcast over the
            # C * M rows after ``layer``, which a mask built for the M input rows would not
            att = torch.ones(length - 1, T + length - 1, dtype=torch.bool, device=device).tril(diagonal=T)[None, None]
            with fan_out(model, layer, torch.zeros_like(a), skip_first=False):
                h = hf.model(input_ids=inp, attention_mask=att, position_ids=pos, past_key_values=cache,
                             use_cache=True).last_hidden_state  # [C*M, length-1, d_model]
            for j, k in enumerate(ks):
                hs[k] = h[j::M]  # [C, length-1, d_model]
        for k in multi:
            w = words[k]
            for p in range(len(w) - 1):
                hp = hs[k][:, p].float()  # [C, d_model]
                if subsets is None:
                    scores[:, k] += unembed.log_probs(hf, hp, torch.full((C,), w[p + 1], device=device))
                else:
                    wsub, target = subsets[(k, p)]
                    logits = hp @ wsub.T  # [C, k], float32
                    cap = getattr(hf.config, "final_logit_softcapping", None)
                    logits = torch.tanh(logits / cap) * cap if cap else logits
                    scores[:, k] += torch.log_softmax(logits, -1)[:, target]
        return scores, hs

    with torch.no_grad():
        if multi and later_vocab is not None:
            _, h0 = run(torch.zeros(1, added.shape[1]))
            subsets, coverage = _later_subsets(hf, h0, words, multi, later_vocab)
        for s in range(0, added.shape[0], batch_size):
            out.append(run(added[s: s + batch_size].float())[0].cpu())
    return WordScores(torch.cat(out), coverage)


@dataclass
class SelfReport:
    """Word log-probabilities of a self-report design.

    ``steered``: ``[n_directions, n_alphas, n_contexts, n_words]``; ``base``: ``[n_contexts, n_words]``;
    the first ``n_emotions`` directions are the emotions (direction i <-> word i), the rest the null.
    """

    words: list[str]
    alphas: list[float]
    steered: np.ndarray
    base: np.ndarray
    n_emotions: int
    null_kinds: list[str]
    later_coverage: float = 1.0

    @property
    def delta(self) -> np.ndarray:
        """Change in log-probability, averaged over contexts: ``[n_directions, n_alphas, n_words]``."""
        return (self.steered - self.base[None, None]).mean(2)


def run_selfreport(model, contexts: Sequence[Sequence[int]], words: Sequence[str], *, directions: torch.Tensor,
                   n_emotions: int, null_kinds: Sequence[str], alphas: Sequence[float], layer: int,
                   residual_norm: float, batch_size: int = 32, later_vocab: int | None = 4096) -> SelfReport:
    """Score every word after every context for every unit direction ``[n_directions, d_model]`` x alpha."""
    ids = word_ids(model.tokenizer, words)
    D, A = directions.shape[0], len(alphas)
    rows = torch.cat([directions.float() * (a * residual_norm) for a in alphas])  # [A*D, d_model], alpha-major
    rows = torch.cat([torch.zeros(1, directions.shape[1]), rows])
    steered = np.zeros((D, A, len(contexts), len(words)), dtype=np.float32)
    base = np.zeros((len(contexts), len(words)), dtype=np.float32)
    coverage = 1.0
    for c, ctx in enumerate(contexts):
        ws = score_words(model, ctx, ids, added=rows, layer=layer, batch_size=batch_size, later_vocab=later_vocab)
        coverage = min(coverage, ws.later_coverage)
        lp = ws.logp.numpy()
        base[c] = lp[0]
        steered[:, :, c] = lp[1:].reshape(A, D, len(words)).transpose(1, 0, 2)
        report("self-report (contexts)", c + 1, len(contexts))
    return SelfReport(list(words), [float(a) for a in alphas], steered, base, n_emotions, list(null_kinds), coverage)


def wilson_interval(k: int, n: int, *, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, mid - half), min(1.0, mid + half))


def diagonal_dominance(m: np.ndarray, *, n_perm: int = 1000, seed: int = 0) -> dict:
    """How much the steered emotion's own word stands out in its row of ``m`` ``[E, E]``
    (steered emotion x word, change in log-probability).

    Columns are centred first (a word every push raises is no evidence). Score: mean over rows of
    the diagonal's normalised rank in its row (1 = always the most raised word, 0.5 = chance);
    p-value against shuffled row labels.
    """
    m = np.asarray(m, dtype=float)
    E = m.shape[0]
    c = m - m.mean(0, keepdims=True)

    def score(mat, perm):
        own = mat[np.arange(E), perm]  # [E]
        below = (mat < own[:, None]).sum(1)
        return float((below / (E - 1)).mean())

    obs = score(c, np.arange(E))
    rng = np.random.default_rng(seed)
    null = np.array([score(c, rng.permutation(E)) for _ in range(n_perm)])
    return {"score": obs, "chance": 0.5, "null_mean": float(null.mean()),
            "null_hi": float(np.quantile(null, 0.95)), "p": float((1 + (null >= obs).sum()) / (n_perm + 1))}


def null_pvalue(own: np.ndarray, null: np.ndarray, kinds: Sequence[str], *, upper: bool) -> np.ndarray:
    """Per word, the larger of the null kinds' rank p-values of ``own [W]`` against ``null [N, W]``.

    For one kind with ``n`` directions, ``p = (1 + #{null >= own}) / (n + 1)`` (``<=`` for a fall): the
    exact rank p of a value exchangeable with the null. The two kinds (isotropic, in-distribution) move
    emotion words by different amounts, so a word passes only when it beats *both*; with at least 19
    directions per kind, passing at p <= 0.05 then happens to a null-like direction at most 5% of the time.
    """
    kinds = np.asarray(list(kinds))
    ps = []
    for k in sorted(set(kinds)):
        nk = null[kinds == k]
        beat = (nk >= own[None]) if upper else (nk <= own[None])
        ps.append((1 + beat.sum(0)) / (len(nk) + 1))
    return np.max(ps, axis=0)


PASS_P = 0.05


def null_calibration(sr: SelfReport) -> list[dict]:
    """The test applied to the null itself: each null direction in turn, for every emotion word, against
    the remaining null directions with the same rule. Per strength, the pass rate.

    A check of the rank arithmetic, not an estimate: with ``n`` directions of each of two kinds, a held-out
    direction passes exactly when it is the most extreme of all ``2n`` for that word, so the rate is
    ``1 / (2n)`` (2.5% for 20 per kind) whatever the data; with ``n = 19`` it can never pass."""
    E, kinds = sr.n_emotions, list(sr.null_kinds)
    out = []
    for a, alpha in enumerate(sr.alphas):
        d = sr.delta[E:, a, :E]  # [N, E]
        hits = []
        for n in range(len(kinds)):
            rest = np.delete(d, n, axis=0)
            p = null_pvalue(d[n], rest, kinds[:n] + kinds[n + 1:], upper=alpha > 0)
            hits.append(p <= PASS_P)
        out.append({"alpha": alpha, "null_pass_rate": float(np.mean(hits)), "n_trials": int(np.size(hits))})
    return out


def summarise(sr: SelfReport, *, headline: float) -> dict:
    """Per-strength summaries, per-emotion rows at the ``headline`` strength, and the matrix score.

    A positive strength passes when the own word's rise beats the null directions of both kinds (for that
    word, at that strength) at rank p <= 0.05 (:func:`null_pvalue`); a negative one when its fall does.
    """
    E, d = sr.n_emotions, sr.delta
    null = d[E:]  # [N, A, W]
    steered_lp = sr.steered.mean(2)  # [D, A, W]
    by_alpha, per_emotion = [], []
    for a, alpha in enumerate(sr.alphas):
        own = d[np.arange(E), a, np.arange(E)]  # [E]
        nul = null[:, a, :E]  # [N, E]
        passed = null_pvalue(own, nul, sr.null_kinds, upper=alpha > 0) <= PASS_P
        lp = steered_lp[np.arange(E), a]  # [E, W]
        ranks = 1 + (lp > lp[np.arange(E), np.arange(E)][:, None]).sum(1)
        k = int(passed.sum())
        by_alpha.append({"alpha": alpha, "frac_beyond_null": k / E, "frac_ci": list(wilson_interval(k, E)),
                         "n_emotions": E, "median_own_rank": float(np.median(ranks)),
                         "mean_own_delta": float(own.mean()), "mean_null_delta": float(nul.mean()),
                         "effect_minus_null": float((own - nul.mean(0)).mean())})
        if alpha == headline:
            base_lp = sr.base.mean(0)
            base_rank = 1 + (base_lp[None, :E] > base_lp[:E, None]).sum(1)
            for i, w in enumerate(sr.words[:E]):
                per_emotion.append({"emotion": w, "delta_logp": float(own[i]), "null_mean": float(nul[:, i].mean()),
                                    "null_percentile": float(100 * ((nul[:, i] < own[i]).mean())),
                                    "rank": int(ranks[i]), "base_rank": int(base_rank[i]), "passed": bool(passed[i])})
    if headline not in sr.alphas:
        raise ValueError(f"headline strength {headline} is not among {sr.alphas}")
    matrix = d[:E, sr.alphas.index(headline), :E]
    return {"by_alpha": by_alpha, "per_emotion": per_emotion, "matrix": matrix,
            "diagonal": diagonal_dominance(matrix)}
