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

That sdpa is registered with Hugging Face as :data:`LEAN_ATTENTION` (HF's own sdpa function and sdpa
masks) with one change. In a model with grouped key/value heads (Gemma 3: 4 query heads share 1; SmolLM2:
9 share 3) HF copies each key and value head once per query head before SDPA whenever there is an
attention mask, which every padded batch has; on the CPU, SDPA reads the shared heads itself
(``enable_gqa``), bit for bit the same result without the copies (tested on both embedded models; 8% of
an attention call, about 1% of a capture). Elsewhere (no mask, one query token, another device) HF's
function runs unchanged.

A whole decoder layer goes one step further. The bridge puts its components into the HF layer's module
tree, so even with lean norms every projection still passes through a component, two hook points and
a device-alignment context: about 60 module calls a layer where the plain HF layer makes 17, which
cost a capture 5-12% against a plain HF model. The layer therefore gets a *plain twin*: a shallow
copy of the HF layer whose children are the wrapped HF modules themselves (the same parameter
tensors; no copy of a weight). While nothing inside the layer is observed (no hook on any of the
block's inner hook points or on a component in the layer, no global module hook) and the model is in
eval mode, the layer runs as its twin; the block's own ``hook_resid_pre``/``hook_resid_post`` are
outside the layer and fire either way, and hooks on the HF modules themselves fire on the twin too. A
twin is built only from components whose forward is, with no hook, exactly "hook_in, the HF module,
hook_out"; a layer holding any other component keeps the bridge's path.

With ``compile=True`` a twin also has a compiled forward (``torch.compile``, one graph shared by every
layer, dynamic in batch size and length), used for passes that only read: no gradient, no key/value
cache, nothing observed inside the layer, not even on the HF modules. Capture is such a pass; token by
token generation is not and keeps the eager twin. The compiled kernels fuse the elementwise work
around the matmuls (the float32 norms, the GELU or SiLU and its product, rotary embeddings), which is
most of a bfloat16 pass on a CPU: measured on 48 stories, Gemma 3 270M 1.39x and SmolLM2 1.23x faster
than the eager pass in bfloat16, 1.14x and 1.06x in float32. Fusion rounds differently: bfloat16
results differ from the eager ones at bfloat16 rounding level (mean per-token cosine with a float32
pass 0.999900 compiled against 0.999887 eager, Gemma), float32 ones at float32 rounding level. Inductor
builds its kernels with a C++ compiler: :func:`compile_available` probes for one once per process.

The lean forwards are closures over the modules they were made for: load a model again rather than
``copy.deepcopy`` a lean one (the copy would compute with the original's modules).
"""

from __future__ import annotations

import copy
import functools
import inspect
import os

import torch
from torch.nn.modules import module as torch_module
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.generalized_components.block import BlockBridge
from transformer_lens.model_bridge.generalized_components.gated_mlp import GatedMLPBridge
from transformer_lens.model_bridge.generalized_components.linear import LinearBridge
from transformer_lens.model_bridge.generalized_components.normalization import NormalizationBridge
from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (
    PositionEmbeddingsAttentionBridge,
)
from transformers.integrations import sdpa_attention
from transformers.utils import output_capturing

__all__ = ["lean", "LEAN_ATTENTION", "NotTwinnable", "COMPILE_ENV", "CompileUnavailable", "compile_available",
           "resolve_compile"]

# The name contains "sdpa" so that HF checks, as for its own, that the model's class supports sdpa.
LEAN_ATTENTION = "emolib_sdpa"


# "0" turns compilation off, "1" requires it; unset (or "auto") compiles where a compiler is available.
COMPILE_ENV = "EMOLIB_COMPILE"


class CompileUnavailable(RuntimeError):
    """Compilation was required but ``torch.compile`` cannot build kernels on this machine."""


def _probe(x: torch.Tensor) -> torch.Tensor:
    return x * 2 + 1


@functools.cache
def compile_available(device_type: str = "cpu") -> bool:
    """Whether ``torch.compile`` builds working kernels for ``device_type`` here (probed once per process).

    On a CPU its inductor backend needs a C++ compiler; on CUDA, Triton.
    """
    try:
        x = torch.ones(4, device=device_type)
        return bool(torch.equal(torch.compile(_probe, dynamic=False)(x), x * 3))
    except Exception:  # noqa: BLE001 - a missing or broken compiler surfaces as any of many exception types
        return False


def resolve_compile(compile: bool | None, *, device_type: str = "cpu") -> bool:
    """Whether to compile: ``None`` reads :data:`COMPILE_ENV` (compile where available unless it says
    ``0``); ``True`` where compilation is impossible is a :class:`CompileUnavailable` naming the fix."""
    if compile is None:
        env = os.environ.get(COMPILE_ENV, "auto").strip().lower()
        if env in ("0", "false", "no", "off"):
            return False
        if env in ("", "auto"):
            return compile_available(device_type)
        if env not in ("1", "true", "yes", "on"):
            raise ValueError(f"{COMPILE_ENV}={env!r}: use 0 (off), 1 (required) or auto")
        compile = True
    if compile and not compile_available(device_type):
        raise CompileUnavailable(
            f"torch.compile cannot build kernels for {device_type} here (on a CPU it needs a C++ compiler such "
            f"as gcc or clang on PATH); install one, or run without compilation: compile=False, or "
            f"{COMPILE_ENV}=0 in the environment")
    return bool(compile)


def _sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
          attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
          is_causal: bool | None = None, position_bias: torch.Tensor | None = None, cache=None,
          **kwargs) -> tuple[torch.Tensor, None]:
    """HF's ``sdpa_attention_forward``, with grouped key/value heads read in place on the CPU.

    ``query``: [batch, heads, q_pos, d_head]; ``key``/``value``: [batch, kv_heads, k_pos, d_head];
    returns ([batch, q_pos, heads, d_head], None) as HF's does. ``kwargs`` are HF's attention interface
    (softcap, sliding_window, ...): handed on unchanged wherever HF's function runs.
    """
    # Exactly the case in which HF would repeat key and value per query head and change nothing else:
    # a mask (so no is_causal, no cropping), more than one query token (no pack_gqa), no position bias,
    # no paged cache, no softcap, no attention weights asked for.
    if (getattr(module, "num_key_value_groups", 1) > 1 and attention_mask is not None and query.shape[2] > 1
            and query.device.type == "cpu" and position_bias is None and cache is None
            and kwargs.get("softcap") is None and not kwargs.get("output_attentions", False)):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                                               dropout_p=dropout, scale=scaling, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention.sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, position_bias=position_bias, cache=cache, **kwargs)


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(LEAN_ATTENTION, _sdpa)
    AttentionMaskInterface.register(LEAN_ATTENTION, sdpa_mask)


def _registries(modules: list[torch.nn.Module]) -> list[dict]:
    """The hook registries of ``modules``: every TransformerLens hook (fwd or bwd, temporary or
    permanent) is in PyTorch's own. A module keeps these dict objects for its lifetime (only
    unpickling makes new ones), so they are gathered once and checked on every call."""
    return [r for m in modules
            for r in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, m._backward_pre_hooks)]


def _observed(registries: list[dict]) -> bool:
    return any(registries)


def _global_hooks() -> bool:
    # Hooks registered for every module (register_module_forward_hook) would fire on the bridge's
    # components: with any of them the bridge's path runs.
    return bool(torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
                or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks)


def _norm_is_hf(norm: NormalizationBridge) -> bool:
    native = norm.use_native_layernorm_autograd or getattr(norm.config, "layer_norm_folding", False)
    # otherwise the bridge computes this norm itself: its result is not the HF module's
    return native and not isinstance(norm.original_component, torch.nn.Identity)


def _lean_norm(norm: NormalizationBridge) -> bool:
    if not _norm_is_hf(norm):
        return False
    bridge_forward = norm.forward
    inner = _registries([norm.hook_scale, norm.hook_normalized])

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
    inner = _registries([p for p in attn.modules()
                         if isinstance(p, HookPoint) and p is not attn.hook_in and p is not attn.hook_out])

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


class NotTwinnable(Exception):
    """A layer holds a component whose forward is not just its HF module between two hook points."""


def _passes_through(component: GeneralizedComponent, *, attention: bool) -> bool:
    """Whether, with no hook, ``component`` computes exactly what its HF module computes."""
    kind = type(component)
    if kind is LinearBridge:
        return True
    if kind is GatedMLPBridge:
        return not getattr(component, "_use_processed_weights", False)
    if isinstance(component, NormalizationBridge):
        return _norm_is_hf(component)
    # The bridge's attention is eager attention step by step; as HF's it needs the sdpa switch.
    return attention and kind is PositionEmbeddingsAttentionBridge


def _plain_twin(module: torch.nn.Module, *, attention: bool) -> torch.nn.Module:
    """``module`` with every bridge component in it replaced by the HF module it wraps.

    Modules with no component below them are shared, not copied; parameters are always shared, and so
    are the hook registries of copied HF modules (transformers' own output-capturing hooks, say, fire
    on the twin as on the original).
    """
    if hasattr(module, "_hf_hook"):
        # Accelerate's offload/placement hooks patch forwards in place; a twin would lose them.
        raise NotTwinnable(f"{type(module).__name__} with an accelerate hook")
    if isinstance(module, GeneralizedComponent):
        if module.original_component is None or not _passes_through(module, attention=attention):
            raise NotTwinnable(type(module).__name__)
        return _plain_twin(module.original_component, attention=attention)
    if not any(isinstance(m, GeneralizedComponent) for m in module.modules()):
        return module
    twin = copy.copy(module)            # a new __dict__ holding the same parameters, settings and hooks
    twin.__dict__.pop("forward", None)  # a lean forward belongs to the original
    twin.__dict__["_modules"] = {name: None if child is None else _plain_twin(child, attention=attention)
                                 for name, child in module._modules.items()}
    return twin


_HOOK_ATTRIBUTES = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
                    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
                    "_state_dict_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
                    "_load_state_dict_post_hooks")


def _unhooked(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` whose modules have hook registries of their own, empty, while sharing every
    parameter, buffer and setting: hooks put on the originals later (transformers installs its
    output-capturing hooks at the first pass) never reach it."""
    bare = copy.copy(module)
    for attribute in _HOOK_ATTRIBUTES:
        if attribute in bare.__dict__:
            bare.__dict__[attribute] = type(bare.__dict__[attribute])()
    bare.__dict__["_modules"] = {name: None if child is None else _unhooked(child)
                                 for name, child in module._modules.items()}
    return bare


def _capture_key(hook) -> str | None:
    """The output a transformers output-capturing hook collects ("hidden_states", "attentions", ...);
    None for any other hook."""
    code = getattr(hook, "__code__", None)
    if getattr(hook, "__module__", None) != output_capturing.__name__ or code is None or "key" not in code.co_freevars:
        return None
    # read from the closure directly: this runs for each such hook on every layer call
    return hook.__closure__[code.co_freevars.index("key")].cell_contents


def _only_idle_capture_hooks(registries: list[dict], *, weightless: bool) -> bool:
    """Whether every hook on ``registries`` is one of transformers' output-capturing hooks with nothing
    to collect now, so that leaving it out changes nothing.

    transformers collects an output only while a forward asked for it (``output_hidden_states``, say);
    the bridge asks for attention weights on every pass, which an sdpa attention never returns
    (``weightless``).
    """
    if not any(registries):
        return True
    collector = output_capturing._active_collector.get() or {}
    for registry in registries:
        for hook in registry.values():
            key = _capture_key(hook)
            if key is None or (key in collector and not (key == "attentions" and weightless)):
                return False
    return True


def _hooked(registries: list[dict], block: BlockBridge) -> bool:
    """Whether a hook other than the block's own wiring is on any of ``registries``."""
    if not any(registries):
        return False
    # The block's own wiring (a pre-hook keeping ln1's input for the attention's split-qkv fork, one
    # calling hook_mlp_in) does nothing while no hook point is observed. Gathered only when some
    # component has a hook at all: that is rare, and this runs on every layer call.
    wiring = {h.id for h in getattr(block, "_capture_hook_handles", ())}
    return any(registry.keys() - wiring for registry in registries if registry)


def _lean_layer(block: BlockBridge, *, attention: bool, compile: bool) -> bool:
    layer = block.original_component
    if layer is None or "forward" in layer.__dict__:
        return False
    try:
        twin = _plain_twin(layer, attention=attention)
    except NotTwinnable:
        return False
    bridge_forward = layer.forward
    # Every hook point of the block but the two around the layer (hook_mlp_in, say, lives on the block
    # and fires from inside the layer), and every component in the layer: a hook on any of them needs
    # the bridge's path. HF modules' hooks fire on the twin too.
    points = _registries([m for m in block.modules()
                          if isinstance(m, HookPoint) and m is not block.hook_in and m is not block.hook_out])
    components = _registries([m for m in layer.modules() if isinstance(m, GeneralizedComponent)])
    # The twin's HF modules share their hook registries with the originals. transformers puts idle
    # output-capturing hooks on some of them at the first pass; the compiled forward is that of a twin
    # without hooks (Dynamo cannot trace those hooks without breaking the graph), used only while every
    # hook there is such an idle one. Any other hook: the eager twin runs it.
    inside = _registries(list(twin.modules()))
    # Every layer's twin runs the same forward code: Dynamo traces it once and all layers share the graph.
    fast = torch.compile(_unhooked(twin).forward, dynamic=True) if compile else None

    def forward(*args, **kwargs):
        # In training mode the bridge's path too: the twin's copied modules keep the mode they were made in.
        if layer.training or _global_hooks() or _observed(points) or _hooked(components, block):
            return bridge_forward(*args, **kwargs)
        # Only a pass that reads: a key/value cache is a Python object updated in place at every step
        # (generation), and a gradient needs autograd's graph.
        if (fast is not None and kwargs.get("past_key_values") is None and not torch.is_grad_enabled()
                and _only_idle_capture_hooks(inside, weightless=attention)):
            return fast(*args, **kwargs)
        return twin.forward(*args, **kwargs)

    # The block passes the layer only the keyword arguments its forward's signature names.
    forward.__signature__ = inspect.signature(bridge_forward)
    object.__setattr__(layer, "forward", forward)
    # Not a registered child (that would count its shared parameters twice); kept for inspection.
    object.__setattr__(layer, "_emolib_twin", twin)
    return True


def lean(model, *, compile: bool = False) -> dict[str, int]:
    """Give ``model``'s decoder layers, normalisation and attention components the lean forward
    (once; in place); with ``compile``, twins also get a compiled forward for passes that only read.

    Returns how many of each were changed. Components of other bridge classes (whose wrapped HF
    modules this has not been checked against) keep the bridge's forward, and so does attention in
    a model whose HF class has no sdpa implementation.
    """
    counts = {"layers": 0, "norms": 0, "attention": 0}
    attention, before = True, model.original_model.config._attn_implementation
    _register_attention()
    try:
        model.original_model.set_attn_implementation(LEAN_ATTENTION)
    except (ValueError, ImportError):
        attention = False
    # Twins first: they are built from the components as they are, before any gets a lean forward.
    for module in model.modules():
        if isinstance(module, BlockBridge):
            counts["layers"] += _lean_layer(module, attention=attention, compile=compile)
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
