"""Scoped residual-stream edits: hooks that exist only inside a ``with`` block."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

__all__ = ["resid_hook_name", "residual_edit", "count_live_hooks"]


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
