"""The bridge's components without their observation-only arithmetic, wherever nothing observes it.

``TransformerBridge`` wraps every Hugging Face module in a component with TransformerLens hook points.
Two of those components do arithmetic of their own on every call, whether or not a hook listens:

- a normalisation computes the norm a second time, in float32, only to offer ``hook_scale`` and
  ``hook_normalized`` (then returns the HF module's own result);
- an attention block re-implements eager attention step by step, only to offer ``hook_pattern``,
  ``hook_attn_scores``, ``hook_rot_q`` and the rest.

:func:`lean` gives each such component a forward that, while none of those inner hook points has a
hook, calls the wrapped HF module directly (firing the component's ``hook_in``/``hook_out``, which
``blocks.L.hook_resid_post`` and the other stream hooks do not depend on), and falls back to the
bridge's own forward the moment one does (``model.hooks(...)``, ``run_with_cache`` and
``add_hook`` all register there). With no inner hook the bridge's attention equals HF's eager
attention bit for bit, so the attention also switches to PyTorch's fused ``scaled_dot_product_attention``
(``sdpa``): the same arithmetic in another order (float32 differences ~1e-6; tested), as a plain HF
model runs by default. The bridge's fallback reads HF's sdpa masks correctly (boolean, or none with
its own causal mask).
"""

from __future__ import annotations

import torch
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge,
)

__all__ = ["lean", "LEAN_ATTENTION"]

LEAN_ATTENTION = "sdpa"


def _observed(points: list[HookPoint]) -> bool:
    # PyTorch's own registries: every TransformerLens hook (fwd or bwd, temporary or permanent) is in them.
    return any(p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p._backward_pre_hooks
               for p in points)


def _lean_norm(norm: NormalizationBridge) -> bool:
    native = norm.use_native_layernorm_autograd or getattr(norm.config, "layer_norm_folding", False)
    if not native or isinstance(norm.original_component, torch.nn.Identity):
        return False  # the bridge computes this norm itself: its result is not the HF module's
    bridge_forward = norm.forward
    inner = [norm.hook_scale, norm.hook_normalized]

    def forward(hidden_states: torch.Tensor, **kwargs) -> torch.Tensor:
        if kwargs or _observed(inner):
            return bridge_forward(hidden_states, **kwargs)
        x = norm.hook_in(hidden_states)
        y = norm.original_component(x)
        return norm.hook_out(y if y.dtype == x.dtype else y.to(x.dtype))

    # object.__setattr__: the bridge forwards attribute writes to the wrapped HF module.
    object.__setattr__(norm, "forward", forward)
    return True


def _lean_attention(attn: PositionEmbeddingsAttentionBridge) -> bool:
    if attn.original_component is None:
        return False
    bridge_forward = attn.forward
    inner = [p for p in attn.modules() if isinstance(p, HookPoint) and p is not attn.hook_in and p is not attn.hook_out]

    def forward(*args, **kwargs):
        if _observed(inner):
            return bridge_forward(*args, **kwargs)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = attn.hook_in(kwargs["hidden_states"])
        else:
            args = (attn.hook_in(args[0]), *args[1:])
        out, weights = attn.original_component(*args, **kwargs)
        return attn.hook_out(out), weights

    object.__setattr__(attn, "forward", forward)
    return True


def lean(model) -> dict[str, int]:
    """Give ``model``'s normalisation and attention components the lean forward (once; in place).

    Returns how many of each were changed. Components of other bridge classes (whose wrapped HF
    modules this has not been checked against) keep the bridge's forward, and so does attention in
    a model whose HF class has no sdpa implementation.
    """
    counts = {"norms": 0, "attention": 0}
    attention, before = True, model.original_model.config._attn_implementation
    try:
        model.original_model.set_attn_implementation(LEAN_ATTENTION)
    except (ValueError, ImportError):
        attention = False
    for module in model.modules():  # each module once, however many names it has
        if "forward" in module.__dict__:
            continue  # already lean
        if isinstance(module, NormalizationBridge):
            counts["norms"] += _lean_norm(module)
        elif attention and type(module) is PositionEmbeddingsAttentionBridge:
            # exactly this class: a subclass may compute something its HF module does not
            counts["attention"] += _lean_attention(module)
    if attention and not counts["attention"]:
        model.original_model.set_attn_implementation(before)  # nothing to gain: keep the bridge's masks
    return counts
