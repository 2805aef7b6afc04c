"""Readouts of a two-option decision that small models can answer, and the gate that validates them.

Three readouts score an :class:`Item` (a question, optionally after a context, with a ``first`` and a
``second`` option) in both option orders. Each returns, per item, the *content preference* for
``first`` over ``second`` in log-odds-like units, separately for each order:

- :attr:`Readout.CLOZE`: mean log-probability of each option's own text as the continuation of
  ``"{context}\\n\\nQuestion: {question}\\nAnswer:"``; the options are never listed, so the score cannot
  depend on their order. Preference = cloze(first) - cloze(second).
- :attr:`Readout.CALIBRATED`: the same, minus each option's mean log-probability after the content-free
  stem ``"Answer:"`` under the same steering (domain-conditional PMI): removes a preference for text
  that is simply likely.
- :attr:`Readout.LETTER`: the options listed as (A)/(B), next-token logit of A over B. Order 1 shows
  ``first`` as (A), order 2 as (B); per item logit P(A) = b + c in order 1 and b - c in order 2, so the
  letter bias ``b`` and the content preference ``c`` separate: ``c = (l1 - l2) / 2``. The probability
  mass put on the two letters is kept, because a readout whose letters get no mass reads nothing.

:func:`validate` scores the control questions (``first`` = the correct answer) and reports accuracy with
a bootstrap CI, both-order accuracy (correct in each order separately) and ``n`` per readout;
:func:`choose_readout` applies the gate stated in advance (:data:`GATE_BOTH_ORDER_ACCURACY`).

Scoring runs whole sequences (no generation). Options that share a prefix share one pass over it: its
KV cache is computed once (under the condition's steering when the whole prompt is steered) and each
option runs on top of it. Logits are computed only at the positions that predict an option's tokens,
because for a 262k vocabulary the unembedding costs more per token than the blocks of a small model.
All statistics are float32/float64 whatever the model dtype.
"""

from __future__ import annotations

import contextlib
import copy
import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emolib import unembed
from emolib.chat import encode
from emolib.generation import right_pad
from emolib.hooks import fan_out, residual_edit
from emolib.progress import report
from emolib.scoring import choice_prompt, last_token_logits, letter_ids, span_mask
from emolib.stats import bootstrap_mean_ci

__all__ = ["Readout", "Where", "Item", "OrderScores", "Steering", "GATE_BOTH_ORDER_ACCURACY", "CONTENT_FREE_STEM",
           "cloze_prefix", "option_logprobs", "score_items", "letter_mass", "credit", "validation_row", "validate",
           "choose_readout", "CACHE_MIN_PREFIX_TOKENS", "CACHE_MIN_OPTIONS", "option_logprobs_conditions",
           "content_conditions"]

GATE_BOTH_ORDER_ACCURACY = 0.75  # stated before any result: a readout must get 75% of controls right in both orders
CONTENT_FREE_STEM = "Answer:"



@dataclass(frozen=True)
class Steering:
    """A vector ``[d_model]`` added to ``blocks.{layer}.hook_resid_post`` at the positions of a mask.

    The readouts pass the mask of each forward pass themselves: a pass over an option's tokens after a
    cached prefix does not start at BOS, so the position rules of :func:`emolib.steering.steer` (which
    takes column 0 of every pass for BOS) cannot place it. The vector is the one ``steer`` adds:
    ``alpha * norm * unit(direction)``, see :func:`emolib.behavior.steering_for`.
    """
    layer: int
    vector: torch.Tensor  # [d_model]

    def at(self, model, mask: torch.Tensor) -> contextlib.AbstractContextManager:
        """Steer the positions where ``mask [batch, seq]`` is True, in every pass inside the block."""
        def edit(resid: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model]
            m = mask.to(resid.device)
            if m.shape != resid.shape[:2]:
                raise ValueError(f"steering mask {tuple(m.shape)} does not match the pass {tuple(resid.shape[:2])}")
            return resid + m[..., None].to(resid.dtype) * self.vector.to(resid.device, resid.dtype)
        return residual_edit(model, {self.layer: edit})


class Readout(enum.Enum):
    CLOZE = "cloze"
    CALIBRATED = "calibrated_cloze"
    LETTER = "letter"


class Where(enum.Enum):
    """Which positions a :class:`Steering` is added at (BOS never)."""
    ALL = "all"          # every position after BOS: context, question and the option text
    FIRST = "first"      # the tokens of the ``first`` option only (its continuation, or its listed text)


@dataclass(frozen=True)
class Item:
    question: str
    first: str
    second: str
    context: str = ""


@dataclass
class OrderScores:
    """Per-item content preference for ``first``, in each order: ``order1``/``order2`` ``[n_items]``.

    ``order1`` is read with ``first`` shown first (as (A) for the letter readout), ``order2`` with it
    shown second. For the letter readout ``letter_logit`` holds logit P(A) in each order ``[2, n]`` and
    ``mass`` P(A) + P(B) ``[2, n]``; for cloze readouts they are None.
    """
    readout: Readout
    order1: np.ndarray
    order2: np.ndarray
    letter_logit: np.ndarray | None = None
    mass: np.ndarray | None = None

    @property
    def content(self) -> np.ndarray:
        """The content preference ``c`` ``[n_items]``: the mean over orders (for letters, (l1 - l2) / 2)."""
        return (self.order1 + self.order2) / 2

    @property
    def letter_bias(self) -> np.ndarray | None:
        """``b = (l1 + l2) / 2`` per item (letter readout only)."""
        return None if self.letter_logit is None else self.letter_logit.mean(0)


def cloze_prefix(item: Item) -> str:
    return (f"{item.context.strip()}\n\n" if item.context else "") + f"Question: {item.question.strip()}\nAnswer:"


def _group_logprobs(model, pre: list[int], opts: list[list[int]], *, steering: Steering | None, where: Where,
                    batch_size: int) -> list[float]:
    """Mean log-probability of each option after one shared prefix, running the prefix once.

    The prefix's KV cache is computed once (steered when ``where`` is ALL, BOS excluded) and reused by
    every option, so a scenario is not recomputed per option. The HF modules are called directly: the
    TransformerLens hooks of the bridge (steering) still fire on them.
    """
    hf = model.original_model
    device = next(model.parameters()).device
    prefix = torch.tensor([pre], device=device)
    ctx = contextlib.nullcontext()
    if steering is not None and where is Where.ALL:
        m = torch.ones(1, len(pre), dtype=torch.bool)
        m[0, 0] = False
        ctx = steering.at(model, m)
    with torch.no_grad(), ctx:
        out = hf.model(input_ids=prefix, use_cache=True)
        firsts = torch.tensor([[o[0] for o in opts]], device=device)  # [1, n_options]
        first_lp = unembed.log_probs(hf, out.last_hidden_state[0, -1:], firsts)[0].tolist()
    cache = out.past_key_values
    res = []
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for s in range(0, len(opts), batch_size):
        chunk = opts[s: s + batch_size]
        lps = [[first_lp[s + r]] for r in range(len(chunk))]
        longer = [k for k, o in enumerate(chunk) if len(o) > 1]
        if longer:
            # the last token of each option predicts nothing we score: feed o[:-1]
            toks, mask = right_pad([chunk[k][:-1] for k in longer], pad)
            c = copy.deepcopy(cache)
            c.batch_repeat_interleave(len(longer))
            att = torch.cat([torch.ones(len(longer), len(pre), dtype=torch.long), mask], dim=1)
            sctx = steering.at(model, mask.bool()) if steering is not None else contextlib.nullcontext()
            with torch.no_grad(), sctx:
                h = hf.model(input_ids=toks.to(device), attention_mask=att.to(device), past_key_values=c,
                             use_cache=True).last_hidden_state  # [n, k - 1, d_model]
            rows = torch.cat([torch.full((len(chunk[k]) - 1,), r) for r, k in enumerate(longer)])
            cols = torch.cat([torch.arange(len(chunk[k]) - 1) for k in longer])
            tgt = torch.tensor([t for k in longer for t in chunk[k][1:]], device=device)
            with torch.no_grad():
                lp = unembed.log_probs(hf, h[rows, cols], tgt).double().cpu().numpy()
            start = 0
            for k in longer:
                n = len(chunk[k]) - 1
                lps[k] += list(lp[start: start + n])
                start += n
        res += [float(np.mean(x)) for x in lps]
    return res


def _batched_logprobs(model, pre: list[list[int]], opts: list[list[int]], *, steering: Steering | None,
                      where: Where, batch_size: int) -> np.ndarray:
    """Mean log-probability of each option in whole-sequence passes (prefix + option), batched across
    items: cheaper than a cached prefix when prefixes are short and not shared."""
    hf = model.original_model
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = np.zeros(len(pre))
    order = np.argsort([-(len(p) + len(o)) for p, o in zip(pre, opts)])  # similar lengths share a batch
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        toks, mask = right_pad([pre[i] + opts[i] for i in idx], pad)
        ctx = contextlib.nullcontext()
        if steering is not None:
            m = torch.zeros(toks.shape, dtype=torch.bool)
            for r, i in enumerate(idx):
                m[r, (1 if where is Where.ALL else len(pre[i])): len(pre[i]) + len(opts[i])] = True
            ctx = steering.at(model, m)
        with torch.no_grad(), ctx:
            h = hf.model(input_ids=toks.to(device), attention_mask=mask.to(device)).last_hidden_state
        # position t predicts token t + 1: an option's tokens are predicted from len(prefix) - 1 on
        rows = torch.cat([torch.full((len(opts[i]),), r) for r, i in enumerate(idx)])
        cols = torch.cat([torch.arange(len(pre[i]) - 1, len(pre[i]) - 1 + len(opts[i])) for i in idx])
        tgt = torch.tensor([t for i in idx for t in opts[i]], device=device)
        with torch.no_grad():
            lp = unembed.log_probs(hf, h[rows, cols], tgt).double().cpu().numpy()
        start = 0
        for i in idx:
            out[i] = lp[start: start + len(opts[i])].mean()
            start += len(opts[i])
    return out


# A prefix is run once and cached when it is long or shared by several options; short one-off
# prefixes go into batched whole-sequence passes (a pass of a few tokens costs mostly overhead).
CACHE_MIN_PREFIX_TOKENS = 48
CACHE_MIN_OPTIONS = 3


def option_logprobs(model, prefixes: Sequence[str], options: Sequence[str], *, batch_size: int = 16,
                    steering: Steering | None = None, where: Where = Where.ALL,
                    progress: str | None = None) -> np.ndarray:
    """Mean log-probability of each ``options[k]`` (with a leading space) after ``prefixes[k]``: ``[n]``.

    ``steering``, if given, is added at the positions chosen by
    ``where`` (never BOS): ALL steers the prefix and the option, FIRST the option's tokens only. Options
    sharing a prefix share one pass over it (its KV cache).
    """
    tok = model.tokenizer
    opt = [list(tok(" " + o.strip(), add_special_tokens=False).input_ids) for o in options]
    if any(len(o) == 0 for o in opt):
        raise ValueError("an option has no tokens")
    groups: dict[str, list[int]] = {}
    for k, p in enumerate(prefixes):
        groups.setdefault(p, []).append(k)
    out = np.zeros(len(opt))
    enc = {p: encode(tok, p) for p in groups}
    loose = [k for p, idx in groups.items() for k in idx
             if len(enc[p]) < CACHE_MIN_PREFIX_TOKENS and len(idx) < CACHE_MIN_OPTIONS]
    if loose:
        out[loose] = _batched_logprobs(model, [enc[prefixes[k]] for k in loose], [opt[k] for k in loose],
                                       steering=steering, where=where, batch_size=batch_size)
    done = len(loose)
    for p, idx in groups.items():
        if len(enc[p]) < CACHE_MIN_PREFIX_TOKENS and len(idx) < CACHE_MIN_OPTIONS:
            continue
        out[idx] = _group_logprobs(model, enc[p], [opt[k] for k in idx], steering=steering, where=where,
                                   batch_size=batch_size)
        done += len(idx)
        if progress:
            report(progress, done, len(opt))
    return out


def option_logprobs_conditions(model, prefix: str, options: Sequence[str], vectors: torch.Tensor, *,
                               layer: int) -> np.ndarray:
    """Mean log-probability of each option after one shared ``prefix``, under each of ``C`` steering
    vectors ``vectors [C, d_model]`` added at ``layer`` on the whole prompt (prefix and option; BOS never):
    ``[C, n_options]``. A zero row is the unsteered model.

    The conditions share the batch axis, and share the work they have in common: the prefix and each
    option run once through the layers up to ``layer`` (identical under every condition) and as ``C``
    rows after it (:func:`emolib.hooks.fan_out`); every option runs on the prefix's KV cache. Equal to
    :func:`option_logprobs` with each condition's :class:`Steering` and ``Where.ALL`` (tested).
    """
    tok, hf = model.tokenizer, model.original_model
    device = next(model.parameters()).device
    opts = [list(tok(" " + o.strip(), add_special_tokens=False).input_ids) for o in options]
    if any(len(o) == 0 for o in opts):
        raise ValueError("an option has no tokens")
    C = vectors.shape[0]
    pre = encode(tok, prefix)
    with torch.no_grad(), fan_out(model, layer, vectors, skip_first=True):
        out = hf.model(input_ids=torch.tensor([pre], device=device), use_cache=True)
        cache = out.past_key_values  # layers up to ``layer``: one row; after it: C rows
        firsts = torch.tensor([o[0] for o in opts], device=device)
        lps = unembed.log_probs(hf, out.last_hidden_state[:, -1], firsts[None, :].expand(C, -1)).double().cpu().numpy()
    for k, o in enumerate(opts):
        if len(o) == 1:
            continue
        # the option's last token predicts nothing that is scored: feed o[:-1]; no padding, so no mask
        with torch.no_grad(), fan_out(model, layer, vectors, skip_first=False):
            h = hf.model(input_ids=torch.tensor([o[:-1]], device=device), past_key_values=copy.deepcopy(cache),
                         use_cache=True).last_hidden_state  # [C, len(o) - 1, d_model]
            tgt = torch.tensor(o[1:], device=device)[None, :].expand(C, -1)
            lp = unembed.log_probs(hf, h.reshape(-1, h.shape[-1]), tgt.reshape(-1)).view(C, -1)
        lps[:, k] += lp.double().sum(1).cpu().numpy()
    return lps / np.array([len(o) for o in opts], dtype=float)[None, :]


def content_conditions(model, items: Sequence[Item], readout: Readout, vectors: torch.Tensor, *, layer: int,
                       progress: str | None = None) -> np.ndarray:
    """The content preference for each item's ``first`` option under each of ``C`` whole-prompt steering
    vectors ``[C, d_model]`` (a zero row: unsteered): ``[C, n_items]``, the same numbers
    :func:`score_items` gives for one :class:`Steering` at a time with ``Where.ALL``. Cloze readouts put the
    conditions on the batch axis; the letter readout scores one condition at a time."""
    if readout is Readout.LETTER:
        return np.stack([score_items(model, items, readout, steering=Steering(layer, v), where=Where.ALL).content
                         for v in vectors])
    out = np.zeros((vectors.shape[0], len(items)))
    for i, it in enumerate(items):
        lp = option_logprobs_conditions(model, cloze_prefix(it), [it.first, it.second], vectors, layer=layer)
        out[:, i] = lp[:, 0] - lp[:, 1]
        if progress:
            report(progress, i + 1, len(items))
    if readout is Readout.CALIBRATED:
        free = option_logprobs_conditions(model, CONTENT_FREE_STEM, [it.first for it in items] +
                                          [it.second for it in items], vectors, layer=layer)
        out -= free[:, : len(items)] - free[:, len(items):]
    return out


def _letter_logits(model, prompts: Sequence[str], spans: Sequence[tuple[int, int]] | None, *, batch_size: int,
                   steering: Steering | None, where: Where) -> tuple[np.ndarray, np.ndarray]:
    """logit P(A) over {A, B} and P(A) + P(B) at the end of each prompt: two ``[n]`` arrays."""
    a, b = letter_ids(model.tokenizer)
    tok = model.tokenizer
    ids = [encode(tok, p) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = next(model.parameters()).device
    logit, mass = [], []
    for s in range(0, len(ids), batch_size):
        toks, mask = right_pad(ids[s: s + batch_size], pad)
        ctx = contextlib.nullcontext()
        if steering is not None:
            m = torch.zeros(toks.shape, dtype=torch.bool)
            for r, k in enumerate(range(s, min(s + batch_size, len(ids)))):
                if where is Where.ALL:
                    m[r, 1: len(ids[k])] = True
                else:
                    sm = span_mask(tok, prompts[k], spans[k])
                    m[r, : len(sm)] = torch.tensor(sm)
                    m[r, 0] = False
            ctx = steering.at(model, m)
        with torch.no_grad(), ctx:
            lg = last_token_logits(model, toks.to(device), mask.to(device)).float()
        p = torch.softmax(lg, dim=-1)
        logit.append((lg[:, a] - lg[:, b]).double().cpu())
        mass.append((p[:, a] + p[:, b]).double().cpu())
    return torch.cat(logit).numpy(), torch.cat(mass).numpy()


def _span(prompt: str, marker: str, option: str) -> tuple[int, int]:
    start = prompt.rindex(marker + option.strip()) + len(marker)
    return start, start + len(option.strip())


def score_items(model, items: Sequence[Item], readout: Readout, *, batch_size: int = 16,
                steering: Steering | None = None, where: Where = Where.ALL,
                progress: str | None = None) -> OrderScores:
    """Content preference for each item's ``first`` option in both orders under ``readout``."""
    if readout in (Readout.CLOZE, Readout.CALIBRATED):
        prefixes = [cloze_prefix(it) for it in items]
        n = len(items)
        if where is Where.FIRST:
            # only ``first`` is steered: ``second`` is scored unsteered (its positions hold no ``first`` tokens)
            lp1 = option_logprobs(model, prefixes, [it.first for it in items], batch_size=batch_size,
                                  steering=steering, where=where, progress=progress)
            lp2 = option_logprobs(model, prefixes, [it.second for it in items], batch_size=batch_size)
        else:
            lp = option_logprobs(model, prefixes * 2, [it.first for it in items] + [it.second for it in items],
                                 batch_size=batch_size, steering=steering, where=where, progress=progress)
            lp1, lp2 = lp[:n], lp[n:]
        pref = lp1 - lp2
        if readout is Readout.CALIBRATED:
            firsts, seconds = [it.first for it in items], [it.second for it in items]
            if where is Where.ALL:
                free = option_logprobs(model, [CONTENT_FREE_STEM] * (2 * n), firsts + seconds, batch_size=batch_size,
                                       steering=steering, where=Where.ALL)
                f1, f2 = free[:n], free[n:]
            else:  # only ``first`` is steered, on its own tokens, after the content-free stem too
                f1 = option_logprobs(model, [CONTENT_FREE_STEM] * n, firsts, batch_size=batch_size,
                                     steering=steering, where=Where.FIRST)
                f2 = option_logprobs(model, [CONTENT_FREE_STEM] * n, seconds, batch_size=batch_size)
            pref = pref - (f1 - f2)
        return OrderScores(readout, pref.copy(), pref.copy())
    tok = model.tokenizer
    p1 = [choice_prompt(tok, it.question, it.first, it.second, context=it.context) for it in items]
    p2 = [choice_prompt(tok, it.question, it.second, it.first, context=it.context) for it in items]
    spans = [_span(p, "(A) ", it.first) for p, it in zip(p1, items)] + \
            [_span(p, "(B) ", it.first) for p, it in zip(p2, items)]
    logit, mass = _letter_logits(model, p1 + p2, spans, batch_size=batch_size, steering=steering, where=where)
    n = len(items)
    l1, l2 = logit[:n], logit[n:]
    # order 1: first is (A), preference = l1; order 2: first is (B), preference = -l2
    return OrderScores(readout, l1, -l2, letter_logit=np.stack([l1, l2]), mass=np.stack([mass[:n], mass[n:]]))


def letter_mass(scores: OrderScores) -> float:
    """Mean probability the letter readout puts on A or B (nan for cloze readouts)."""
    return float("nan") if scores.mass is None else float(scores.mass.mean())


def credit(scores: OrderScores) -> np.ndarray:
    """Per item, 1 when the content preference picks ``first``, 0 when it picks ``second``, and 0.5 for
    a tie (exactly 0: the readout cannot tell the options apart) ``[n_items]``."""
    return np.where(scores.content > 0, 1.0, np.where(scores.content == 0, 0.5, 0.0))


def validation_row(scores: OrderScores, *, seed: int = 0) -> dict:
    """Accuracy of the content preference, its bootstrap CI, both-order accuracy and the number of ties.

    A tie (content preference exactly 0: the readout cannot tell the options apart, as a bfloat16 letter
    logit that is the same in both orders) counts half, so a readout that says nothing scores 50%, not
    less. Both-order accuracy needs the right answer in each order separately: a tie fails it.
    """
    correct = credit(scores)
    both = ((scores.order1 > 0) & (scores.order2 > 0)).astype(float)
    lo, hi = bootstrap_mean_ci(correct, seed=seed)
    blo, bhi = bootstrap_mean_ci(both, seed=seed)
    row = {"readout": scores.readout.value, "accuracy": float(correct.mean()), "accuracy_ci": [lo, hi],
           "both_order_accuracy": float(both.mean()), "both_order_accuracy_ci": [blo, bhi], "n": int(len(correct)),
           "ties": int((scores.content == 0).sum())}
    if scores.letter_logit is not None:
        row["letter_mass"] = letter_mass(scores)
        row["p_a"] = float((1 / (1 + np.exp(-scores.letter_logit))).mean())
    return row


def validate(model, items: Sequence[Item], *, readouts: Sequence[Readout] = tuple(Readout), batch_size: int = 16,
             seed: int = 0) -> tuple[pd.DataFrame, dict[Readout, OrderScores]]:
    """Score the control ``items`` (``first`` = correct) with every readout: the table and the raw scores."""
    raw = {r: score_items(model, items, r, batch_size=batch_size, progress=f"readout validation ({r.value})")
           for r in readouts}
    table = pd.DataFrame([validation_row(s, seed=seed) for s in raw.values()]).set_index("readout")
    return table, raw


def choose_readout(table: pd.DataFrame, *, threshold: float = GATE_BOTH_ORDER_ACCURACY) -> tuple[Readout | None, bool]:
    """The readout with the best both-order accuracy on the controls, and whether it passes the gate.

    Returns ``(None, False)`` when no readout reaches ``threshold``: no decision is then evidence.
    """
    best = table.both_order_accuracy.idxmax()
    passed = bool(table.both_order_accuracy.max() >= threshold)
    return (Readout(best) if passed else None), passed
