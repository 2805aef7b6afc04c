"""Reading choices and text quality off a model.

- :func:`choice_prompt` / :func:`option_probability`: a two-option question shown as (A)/(B), scored
  from the next-token probabilities of ``A`` and ``B`` after the answer prefix; :func:`choice_both_orders`
  averages the two option orders so a letter bias cancels.
- :func:`bradley_terry`: strengths from pairwise (soft) choices, on the Elo scale.
- :func:`fluency`: perplexity of a continuation under a reference model, and its repetition rate.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from emolib.chat import encode, format_chat
from emolib.progress import report

__all__ = ["choice_prompt", "letter_ids", "last_token_logits", "option_probability", "span_mask", "choice_both_orders", "bradley_terry",
           "repetition_rate", "continuation_perplexity", "fluency"]

ANSWER_PREFIX = "("


def choice_prompt(tokenizer, question: str, option_a: str, option_b: str, *, context: str = "") -> str:
    """The chat-formatted prompt, ending with the answer prefix ``(`` so the next token is A or B."""
    body = (f"{context.strip()}\n\n" if context else "") + (
        f"{question.strip()}\n(A) {option_a.strip()}\n(B) {option_b.strip()}\n\nAnswer with A or B.")
    text = format_chat(tokenizer, [{"role": "user", "content": body}])
    # The plain format ends with "Assistant:", a chat template with a newline.
    return text + (ANSWER_PREFIX if text.endswith("\n") else " " + ANSWER_PREFIX)


def letter_ids(tokenizer) -> tuple[int, int]:
    """Token ids of ``A`` and ``B`` as they follow ``(``."""
    ids = []
    for letter in ("A", "B"):
        toks = tokenizer(ANSWER_PREFIX + letter, add_special_tokens=False).input_ids
        base = tokenizer(ANSWER_PREFIX, add_special_tokens=False).input_ids
        if toks[: len(base)] != base or len(toks) != len(base) + 1:
            toks = tokenizer(letter, add_special_tokens=False).input_ids
            if len(toks) != 1:
                raise ValueError(f"cannot find a single token for {letter!r}")
            ids.append(toks[0])
        else:
            ids.append(toks[-1])
    return ids[0], ids[1]


def last_token_logits(model, toks: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[batch, vocab]`` at each row's last real token of a right-padded batch.

    The final norm and unembedding run on those rows only, not on every position: for a 262k
    vocabulary that is most of a small model's forward cost. Hooks already on the model (steering)
    still apply.
    """
    from emolib.capture import _StopForward
    from emolib.hooks import resid_hook_name

    last = mask.sum(1) - 1
    got = {}

    def grab(resid, hook):
        got["h"] = resid[torch.arange(resid.shape[0], device=resid.device), last.to(resid.device)]
        raise _StopForward

    with model.hooks(fwd_hooks=[(resid_hook_name(model.cfg.n_layers - 1), grab)]):
        try:
            model(toks, attention_mask=mask)
        except _StopForward:
            pass
    hf = model.original_model
    logits = hf.lm_head(hf.model.norm(got["h"][:, None, :]))[:, 0]
    cap = getattr(hf.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def option_probability(model, prompts: Sequence[str], *, batch_size: int = 8,
                       steering: Callable[..., contextlib.AbstractContextManager] | None = None,
                       spans: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """P(A) renormalised over {A, B} at the end of each prompt: ``[n_prompts]``.

    ``steering``, if given, is called to open a context around each batch: ``steering()``, or, when
    character ``spans`` (one per prompt) are given, ``steering(mask)`` with the ``[batch, seq]`` bool
    mask of the tokens inside each prompt's span (for steering on one option's tokens only).
    Prompts are right-padded; the probability is read at each prompt's own last token.
    """
    a, b = letter_ids(model.tokenizer)
    ids = [encode(model.tokenizer, p) for p in prompts]
    span_masks = [span_mask(model.tokenizer, p, sp) for p, sp in zip(prompts, spans)] if spans is not None else None
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    out = []
    for s in range(0, len(ids), batch_size):
        batch = ids[s: s + batch_size]
        width = max(map(len, batch))
        toks = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), width, dtype=torch.long)
        for i, x in enumerate(batch):
            toks[i, : len(x)] = torch.tensor(x)
            mask[i, : len(x)] = 1
        if steering is None:
            ctx = contextlib.nullcontext()
        elif span_masks is None:
            ctx = steering()
        else:
            m = torch.zeros(len(batch), width, dtype=torch.bool)
            for i, sm in enumerate(span_masks[s: s + batch_size]):
                m[i, : len(sm)] = torch.tensor(sm)
            ctx = steering(m)
        with torch.no_grad(), ctx:
            logits = last_token_logits(model, toks.to(device), mask.to(device))
        pair = logits[:, [a, b]].float()
        out.append(torch.softmax(pair, dim=-1)[:, 0].cpu())
        report("option scoring (prompts)", min(s + batch_size, len(ids)), len(ids))
    return torch.cat(out).numpy()


def span_mask(tokenizer, text: str, span: tuple[int, int]) -> list[bool]:
    """Per token of ``encode(text)``: does it overlap the character span ``[start, end)``?"""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    inside = [bool(e > span[0] and s < span[1]) for s, e in enc["offset_mapping"]]
    ids = encode(tokenizer, text)
    if len(ids) == len(inside) + 1:  # encode() prepended BOS
        inside = [False] + inside
    if len(ids) != len(inside):
        raise ValueError("tokenisation with offsets does not match encode(); cannot map the span")
    return inside


def _option_span(prompt: str, marker: str, option: str) -> tuple[int, int]:
    start = prompt.rindex(marker + option.strip()) + len(marker)
    return start, start + len(option.strip())


def choice_both_orders(model, items: Sequence[tuple[str, str, str]], *, context: Sequence[str] | None = None,
                       batch_size: int = 8, steering=None, steer_first_option: bool = False) -> dict[str, np.ndarray]:
    """For (question, first, second) items: P(choose ``first``) in each order and their mean.

    Order 1 shows ``first`` as (A); order 2 shows it as (B). The mean cancels a constant letter bias.
    With ``steer_first_option``, ``steering(mask)`` is opened with the mask of ``first``'s tokens.
    """
    tok = model.tokenizer
    ctx = list(context) if context is not None else [""] * len(items)
    p1 = [choice_prompt(tok, q, x, y, context=c) for (q, x, y), c in zip(items, ctx)]
    p2 = [choice_prompt(tok, q, y, x, context=c) for (q, x, y), c in zip(items, ctx)]
    spans = None
    if steer_first_option:
        # the span of the option text of ``first`` in each prompt: after "(A) " in order 1, "(B) " in order 2
        spans = [_option_span(p, "(A) ", x) for p, (_, x, _) in zip(p1, items)] + \
                [_option_span(p, "(B) ", x) for p, (_, x, _) in zip(p2, items)]
    pa = option_probability(model, p1 + p2, batch_size=batch_size, steering=steering, spans=spans)
    n = len(items)
    order1, order2 = pa[:n], 1 - pa[n:]
    return {"p_first": (order1 + order2) / 2, "order1": order1, "order2": order2,
            "letter_bias_a": float((pa[:n].mean() + pa[n:].mean()) / 2)}


def bradley_terry(n_items: int, pairs: Sequence[tuple[int, int, float]], *, iters: int = 500,
                  l2: float = 1e-3) -> np.ndarray:
    """Elo-scale strengths from soft outcomes ``(i, j, p_i_beats_j)``, centred at 0.

    Maximises the Bradley-Terry likelihood with a small ridge penalty (keeps strengths finite when an
    item always wins); 400 Elo points = 10:1 odds.
    """
    if not pairs:
        raise ValueError("no pairs")
    i = np.array([p[0] for p in pairs])
    j = np.array([p[1] for p in pairs])
    y = np.array([p[2] for p in pairs], dtype=float)
    beta = np.zeros(n_items)
    for _ in range(iters):
        pr = 1 / (1 + np.exp(-(beta[i] - beta[j])))
        g = np.zeros(n_items)
        np.add.at(g, i, y - pr)
        np.add.at(g, j, -(y - pr))
        g -= l2 * beta
        w = pr * (1 - pr)
        h = np.zeros(n_items)
        np.add.at(h, i, w)
        np.add.at(h, j, w)
        step = g / (h + l2)
        beta += step
        beta -= beta.mean()
        if np.abs(step).max() < 1e-8:
            break
    return beta * 400 / math.log(10)


def repetition_rate(tokens: Sequence[int], n: int = 3) -> float:
    """Fraction of the text's n-grams that repeat an earlier n-gram (0 = no repetition)."""
    grams = [tuple(tokens[k: k + n]) for k in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def continuation_perplexity(model, prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> float:
    """Perplexity of ``continuation_ids`` given ``prompt_ids`` under ``model`` (unsteered)."""
    if not continuation_ids:
        return float("nan")
    ids = torch.tensor([list(prompt_ids) + list(continuation_ids)], device=next(model.parameters()).device)
    with torch.no_grad():
        logits = model(ids)
    logp = torch.log_softmax(logits[0, :-1].float(), dim=-1)
    targets = ids[0, 1:]
    tok_lp = logp[torch.arange(len(targets)), targets][len(prompt_ids) - 1:]
    return float(torch.exp(-tok_lp.mean()))


def fluency(model, prompt_ids: Sequence[int], continuation_ids: Sequence[int]) -> dict[str, float]:
    return {"perplexity": continuation_perplexity(model, prompt_ids, continuation_ids),
            "repetition": repetition_rate(list(continuation_ids))}
