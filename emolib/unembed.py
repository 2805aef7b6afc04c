"""The unembedding of final (already normed) states, without the costs that are not arithmetic.

For a small model with a 262k vocabulary the unembedding is most of the cost of a scored or generated
token, and on a CPU most of *its* cost was not the matrix product: the ``[n, vocab]`` float32 copy of
the logits, a full ``log_softmax`` over them, and the bridge's ``lm_head`` wrapper (its ``F.linear``
ran at less than half the speed of a plain product of the same bfloat16 tensors). Here the product runs
against the weight directly, one slice of the vocabulary at a time, and each slice is reduced at once:

- :func:`log_probs`: log P(target) for given targets, by a running log-sum-exp in float32;
- :func:`greedy`: the argmax token (the first index among ties, as ``argmax``);
- :func:`logits`: the full float32 logits, for the few places that need the whole distribution.

The logits are the model's own: the same dtype for the product, its bias if it has a non-zero one, and
its final soft-capping where it has one (Gemma 2).
"""

from __future__ import annotations

import torch

__all__ = ["VOCAB_CHUNK", "logits", "log_probs", "greedy"]

VOCAB_CHUNK = 32768  # a [rows, 32768] slice of logits stays in cache-sized memory for rows up to ~256


def _parts(hf) -> tuple[torch.Tensor, torch.Tensor | None, float | None]:
    w = hf.lm_head.weight  # [vocab, d_model]
    b = getattr(hf.lm_head, "bias", None)
    b = b if b is not None and bool(b.abs().max() > 0) else None  # the bridge's wrapper shows a zero bias
    return w, b, getattr(hf.config, "final_logit_softcapping", None)


def _slice(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, cap: float | None, s: int, e: int) -> torch.Tensor:
    z = h @ w[s:e].T  # [n, e - s] in the model's dtype
    if b is not None:
        z = z + b[s:e]
    if cap:
        z = torch.tanh(z / cap) * cap
    return z


def logits(hf, h: torch.Tensor) -> torch.Tensor:
    """Next-token logits ``[n, vocab]`` float32 from final states ``h [n, d_model]``."""
    w, b, cap = _parts(hf)
    return _slice(h.to(w.dtype), w, b, cap, 0, w.shape[0]).float()


def log_probs(hf, h: torch.Tensor, targets: torch.Tensor, *, chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """log P(target) under the full-vocabulary softmax: ``targets [n, k]`` (or ``[n]``) token ids for
    final states ``h [n, d_model]`` -> float32 of the same shape as ``targets``."""
    w, b, cap = _parts(hf)
    h = h.to(w.dtype)
    flat = targets.ndim == 1
    t = (targets[:, None] if flat else targets).to(h.device)
    n, vocab = h.shape[0], w.shape[0]
    lse = torch.full((n,), -torch.inf, device=h.device)
    picked = torch.zeros(t.shape, device=h.device)
    for s in range(0, vocab, chunk):
        e = min(s + chunk, vocab)
        z = _slice(h, w, b, cap, s, e).float()  # [n, e - s]
        # log_softmax's fused kernel is several times faster on a CPU than logsumexp or exp (measured);
        # any column of z - log_softmax(z) is the slice's log-sum-exp
        lse = torch.logaddexp(lse, z[:, 0] - torch.log_softmax(z, dim=-1)[:, 0])
        inside = (t >= s) & (t < e)
        if bool(inside.any()):
            got = z.gather(1, (t - s).clamp(0, e - s - 1))
            picked = torch.where(inside, got, picked)
    out = picked - lse[:, None]
    return out[:, 0] if flat else out


def greedy(hf, h: torch.Tensor, *, chunk: int = VOCAB_CHUNK) -> torch.Tensor:
    """The most likely next token ``[n]`` for final states ``h [n, d_model]`` (first index among ties)."""
    w, b, cap = _parts(hf)
    h = h.to(w.dtype)
    best_v, best_i = None, None
    for s in range(0, w.shape[0], chunk):
        v, i = _slice(h, w, b, cap, s, min(s + chunk, w.shape[0])).max(dim=-1)
        if best_v is None:
            best_v, best_i = v, i + s
        else:
            better = v > best_v  # strictly: an equal value in a later slice has a larger index
            best_v, best_i = torch.where(better, v, best_v), torch.where(better, i + s, best_i)
    return best_i
