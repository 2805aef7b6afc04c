"""Steering: add emotion directions to the residual stream inside a ``with`` block.

``steer(model, vectors, emotions={"calm": 1.0}, layers=[9], alpha=0.5, norms=norms)`` adds
``alpha * weight * norms[layer] * unit(vector)`` to ``blocks.L.hook_resid_post`` at each layer, where
``norms`` holds the layer's mean residual norm (BOS excluded), so ``alpha`` is a fraction of a
typical residual vector's length. ``positions`` chooses where:

- ``"all"``: every position of every forward pass (batched passes and KV-cached generation alike);
- ``"prompt"``: positions before ``prompt_len`` only (the prompt; generated tokens are left alone);
- ``"generated"``: positions from ``prompt_len`` on (every generated token, the first included);
- a bool tensor ``[seq]`` or ``[batch, seq]``: exactly those positions of a full-sequence pass
  (for example the tokens of one option in a multiple-choice prompt).

With a KV cache, the first pass holds the whole prompt and each later pass one new token; without
one, every pass holds the whole sequence from position 0. Both are handled, so steered greedy
generation is the same with and without the cache. Hooks are removed when the block exits, also
on exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch

from emolib.hooks import residual_edit
from emolib.vectors import EmotionVectors

__all__ = ["POSITIONS", "steering_vector", "steer", "random_direction"]

POSITIONS = ("all", "prompt", "generated")


def steering_vector(vectors: EmotionVectors, emotions: Mapping[str, float] | Sequence[str] | str, layer: int,
                    *, alpha: float, norm: float) -> torch.Tensor:
    """``sum_e alpha * w_e * norm * unit(v_e)``: the ``[d_model]`` vector added at ``layer``."""
    if isinstance(emotions, str):
        emotions = {emotions: 1.0}
    elif not isinstance(emotions, Mapping):
        emotions = {e: 1.0 for e in emotions}
    if not emotions:
        raise ValueError("no emotions to steer with")
    total = torch.zeros(vectors.d_model)
    for e, w in emotions.items():
        total += float(w) * vectors.vector(e, layer, unit=True)
    return alpha * norm * total


def random_direction(d_model: int, *, seed: int) -> torch.Tensor:
    """A seeded random unit vector (the equal-norm control for steering)."""
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _position_hook(vec: torch.Tensor, positions, prompt_len: int | None):
    calls = {"n": 0}

    def edit(resid: torch.Tensor) -> torch.Tensor:
        seq = resid.shape[1]
        first = calls["n"] == 0
        calls["n"] += 1
        v = vec.to(device=resid.device, dtype=resid.dtype)
        if isinstance(positions, torch.Tensor):
            mask = positions.to(resid.device)
            if mask.shape[-1] != seq:
                if seq == 1 and not first:
                    return resid  # a cached generation step: beyond the masked prompt
                raise ValueError(f"position mask has length {mask.shape[-1]}, the sequence has {seq}")
            m = mask if mask.ndim == 2 else mask[None, :]
            return resid + m[..., None].to(resid.dtype) * v
        if positions == "all":
            return resid + v
        # A pass holds absolute positions 0..seq-1, except a cached step (one new token after the first pass).
        cached_step = seq == 1 and not first
        if cached_step:
            return resid + v if positions == "generated" else resid
        pos = torch.arange(seq, device=resid.device)
        mask = pos < prompt_len if positions == "prompt" else pos >= prompt_len
        return resid + mask[None, :, None].to(resid.dtype) * v

    return edit


@contextlib.contextmanager
def steer(model, vectors: EmotionVectors | None = None, *, layers: Sequence[int] | int,
          alpha: float, norms: Mapping[int, float] | torch.Tensor,
          emotions: Mapping[str, float] | Sequence[str] | str | None = None,
          direction: torch.Tensor | None = None, positions: str | torch.Tensor = "all",
          prompt_len: int | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Steer ``model`` towards ``emotions`` (or along a raw unit ``direction``) inside the block.

    Yields the vector added at each layer. ``norms[layer]`` is the layer's mean residual norm.
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    if (emotions is None) == (direction is None):
        raise ValueError("give exactly one of emotions= or direction=")
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; use one of {POSITIONS} or a bool mask")
    if isinstance(positions, str) and positions != "all" and prompt_len is None:
        raise ValueError(f"positions={positions!r} needs prompt_len")
    if emotions is not None:
        if vectors is None:
            raise ValueError("emotions= needs the EmotionVectors")
        vectors.check_model(model)
    added = {}
    for layer in layers:
        norm = float(norms[layer])
        if direction is not None:
            d = direction.float()
            added[layer] = alpha * norm * d / d.norm()
        else:
            added[layer] = steering_vector(vectors, emotions, layer, alpha=alpha, norm=norm)
    edits = {layer: _position_hook(v, positions, prompt_len) for layer, v in added.items()}
    with residual_edit(model, edits):
        yield added
