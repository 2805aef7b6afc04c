"""Batched steered greedy generation: prompts x conditions on the batch axis.

Prompts are left-padded to a common width with an attention mask, and a greedy loop runs the
bridge's underlying Hugging Face model with its KV cache; the bridge's hook points
(``blocks.L.hook_resid_post``) fire inside it, so steering stays a TransformerLens hook. Each row
carries its own steering vector (``[batch, d_model]``, zero for an unsteered row): one pass serves
many conditions. Left padding moves every row's BOS off column 0, so the steering mask is built
per row (real tokens after the row's BOS) and position ids come from the attention mask, which the
batched-equals-one-at-a-time test checks on every model.

Why batching: the per-token cost of a small model on a CPU is its own (largely its unembedding),
not the bridge's, and a batch of rows shares every weight read. Why a loop of our own: Hugging
Face ``generate`` copies the ``[batch, vocab]`` logits to float32 at every step, which at a 262k
vocabulary cost more than the unembedding; :func:`emolib.unembed.greedy` takes the argmax slice by
slice instead, with the same tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from emolib import unembed
from emolib.hooks import residual_edit
from emolib.progress import report
from emolib.steering import Span

__all__ = ["left_pad", "right_pad", "generate_batch"]


def _greedy(hf, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int, eos: int | None,
            pad: int) -> torch.Tensor:
    """Greedy decoding of left-padded ``ids [batch, width]`` with the KV cache: ``[batch, new]`` tokens,
    ``new <= max_new_tokens`` (``pad`` after a row's ``eos``; it stops once every row has ended).

    A loop of its own rather than ``generate``: the same tokens (tested against the bridge) without the
    per-step float32 copy of the ``[batch, vocab]`` logits (:func:`emolib.unembed.greedy`). Position ids
    come from the attention mask, as ``generate`` derives them for left padding.
    """
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out = hf.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    cache, h = out.past_key_values, out.last_hidden_state[:, -1]
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    new = []
    for step in range(max_new_tokens):
        nxt = unembed.greedy(hf, h)
        if eos is not None:
            nxt = nxt.masked_fill(done, pad)
            done |= nxt == eos
        new.append(nxt)
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        pos = pos[:, -1:] + 1
        out = hf.model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos, past_key_values=cache,
                       use_cache=True)
        cache, h = out.past_key_values, out.last_hidden_state[:, -1]
    return torch.stack(new, dim=1)


def right_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, width], attention_mask [batch, width])`` with padding on the right."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(list(row), dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [batch, width], attention_mask [batch, width])`` with padding on the left."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


def _row_edit(added: torch.Tensor, prompt_mask: torch.Tensor, span: Span):
    """Hook adding ``added[b]`` to row b: on its real prompt tokens after BOS (first pass) and/or on
    each generated token (cached steps), as ``span`` says."""
    first_real = prompt_mask.float().argmax(1)  # [batch]: the column of each row's BOS
    cols = torch.arange(prompt_mask.shape[1])
    steer_prompt = prompt_mask.bool() & (cols[None, :] > first_real[:, None])  # [batch, width]
    calls = {"n": 0}

    def edit(resid: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model]
        first = calls["n"] == 0
        calls["n"] += 1
        v = added.to(device=resid.device, dtype=resid.dtype)[:, None, :]
        if first:
            if resid.shape[1] != steer_prompt.shape[1]:
                raise ValueError("the first pass must hold the whole left-padded prompt")
            if span is Span.GENERATED:
                return resid
            return resid + steer_prompt.to(resid.device)[..., None].to(resid.dtype) * v
        return resid if span is Span.PROMPT else resid + v

    return edit


def generate_batch(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
                   added: torch.Tensor | None = None, layer: int | None = None, span: Span = Span.ALL,
                   batch_size: int = 16, stop_at_eos: bool = True, progress: str | None = None) -> list[list[int]]:
    """Greedy continuations (token ids, prompt excluded, cut after EOS) of each prompt.

    ``added`` ``[n_prompts, d_model]`` is the vector added to row i at ``layer`` (a zero row is
    unsteered); ``span`` chooses prompt and/or generated positions (BOS never).
    """
    if (added is None) != (layer is None):
        raise ValueError("give both added= and layer=, or neither")
    if added is not None and added.shape != (len(prompts), model.cfg.d_model):
        raise ValueError(f"added must be [{len(prompts)}, {model.cfg.d_model}], got {tuple(added.shape)}")
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    eos = tok.eos_token_id
    hf = model.original_model
    device = next(hf.parameters()).device
    out: list[list[int]] = []
    # Similar lengths together: less padding. The order is restored at the end.
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], pad)
        edits = {} if added is None else {layer: _row_edit(added[idx].float(), mask, span)}
        with torch.no_grad(), residual_edit(model, edits):
            gen = _greedy(hf, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens,
                          eos=eos if stop_at_eos else None, pad=pad)
        for row in gen.tolist():
            if stop_at_eos and eos in row:
                row = row[: row.index(eos) + 1]
            out.append(row)
        if progress:
            report(progress, min(s + batch_size, len(order)), len(order))
    result: list[list[int]] = [[] for _ in prompts]
    for k, i in enumerate(order):
        result[i] = out[k]
    return result
