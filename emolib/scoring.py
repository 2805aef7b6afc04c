"""Reading choices and text quality off a model.

- :func:`choice_prompt`, :func:`letter_ids`, :func:`span_mask`: the pieces of a two-option question shown
  as (A)/(B), which :mod:`emolib.readouts` scores (letters, cloze, calibrated cloze);
- :func:`last_token_logits`: next-token logits of a left-padded batch;
- :func:`repetition_rate`: the share of repeated n-grams in a continuation (the fluency guard).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emolib.chat import encode, format_chat

__all__ = ["choice_prompt", "letter_ids", "last_token_logits", "span_mask", "repetition_rate"]

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


def repetition_rate(tokens: Sequence[int], n: int = 3) -> float:
    """Fraction of the text's n-grams that repeat an earlier n-gram (0 = no repetition)."""
    grams = [tuple(tokens[k: k + n]) for k in range(len(tokens) - n + 1)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


