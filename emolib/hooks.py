"""Scoped residual-stream edits: hooks that exist only inside a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

__all__ = ["resid_hook_name", "residual_edit", "fan_out", "count_live_hooks"]


def resid_hook_name(layer: int, *, point: str = "resid_post") -> str:
    """TransformerLens name of a residual hook, e.g. ``blocks.3.hook_resid_post``."""
    return f"blocks.{layer}.hook_{point}"


def count_live_hooks(model) -> int:
    """Forward hooks currently attached anywhere in ``model`` (0 after every emolib context)."""
    seen: set[int] = set()
    total = 0
    for hp in model.hook_dict.values():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        total += len(getattr(hp, "fwd_hooks", []))
    return total


@contextlib.contextmanager
def residual_edit(model, edits: Mapping[int, torch.Tensor | Callable[[torch.Tensor], torch.Tensor]], *,
                  point: str = "resid_post") -> Iterator[None]:
    """Add a vector ``[d_model]`` (or apply a function ``[batch, pos, d_model] -> same``) to the
    residual stream at each layer in ``edits`` for every forward pass inside the block.

    The hooks are removed when the block exits, also when its body raises.
    """
    n_layers = model.cfg.n_layers
    hooks = []
    for layer, edit in edits.items():
        if not 0 <= layer < n_layers:
            raise ValueError(f"layer {layer} out of range for a model with {n_layers} layers")
        if isinstance(edit, torch.Tensor):
            if edit.shape != (model.cfg.d_model,):
                raise ValueError(f"edit for layer {layer} has shape {tuple(edit.shape)}, expected ({model.cfg.d_model},)")
            fn = (lambda v: lambda resid, hook: resid + v.to(resid.dtype).to(resid.device))(edit)
        else:
            fn = (lambda f: lambda resid, hook: f(resid))(edit)
        hooks.append((resid_hook_name(layer, point=point), fn))
    with model.hooks(fwd_hooks=hooks):
        yield


def fan_out(model, layer: int, vectors: torch.Tensor, *, skip_first: bool) -> contextlib.AbstractContextManager:
    """Run the layers up to ``layer`` once, and the rest once per condition.

    A pass of ``R`` rows leaves ``blocks.{layer}.hook_resid_post`` as ``C * R`` rows, condition-major
    (row ``c * R + r`` is input row ``r`` plus ``vectors[c]``; ``vectors [C, d_model]``, a zero row
    leaves a copy unsteered), at every position, or all but column 0 when ``skip_first`` (the BOS of a
    pass that starts the sequence). Conditions that differ only from ``layer`` on share the work
    below it. A KV cache made inside the block holds ``R`` rows up to ``layer`` and ``C * R`` after it;
    a later pass on it must be fanned out the same way. Masks must broadcast over rows (no padding).
    """
    def edit(resid: torch.Tensor) -> torch.Tensor:  # [R, seq, d_model] -> [C * R, seq, d_model]
        R = resid.shape[0]
        v = vectors.to(resid.device, resid.dtype).repeat_interleave(R, dim=0)[:, None, :]
        v = v.expand(-1, resid.shape[1], -1)
        if skip_first:
            v = torch.cat([torch.zeros_like(v[:, :1]), v[:, 1:]], dim=1)
        return resid.repeat(vectors.shape[0], 1, 1) + v
    return residual_edit(model, {layer: edit})
