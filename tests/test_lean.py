"""emolib.lean: the bridge's norms and attention without observation-only arithmetic give the same model,
and the bridge's own forward comes back the moment an inner hook point is observed."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.hook_points import HookPoint

from transformer_lens.model_bridge.generalized_components.linear import LinearBridge

from conftest import real_model
from emolib.capture import capture
from emolib.generation import right_pad
from emolib.lean import LEAN_ATTENTION
from emolib.models import load_model


def plain_bridge(location: str, dtype=torch.float32):
    """The bridge as TransformerLens boots it, without emolib.lean."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(location, device="cpu", dtype=dtype).eval()


def padded_batch(model, texts):
    return right_pad([model.tokenizer(t)["input_ids"] for t in texts], model.tokenizer.pad_token_id or 0)


TEXTS = ["The quick brown fox jumps over the lazy dog.", "I could not sleep.",
         "She walked to the market and bought bread, apples and cheese."]


def test_every_norm_and_attention_is_lean(tiny_model):
    counts = tiny_model.emolib_lean
    # 2 layers (each a plain twin); 2 layers x (2 norms) + the final norm; 2 attention blocks
    assert counts == {"layers": 2, "norms": 5, "attention": 2}
    assert tiny_model.original_model.config._attn_implementation == LEAN_ATTENTION


def test_lean_model_equals_the_bridge_on_a_padded_batch(tiny_model, tiny_model_dir):
    plain = plain_bridge(str(tiny_model_dir))
    assert plain.original_model.config._attn_implementation == "eager"
    toks, mask = padded_batch(tiny_model, TEXTS)
    with torch.no_grad():
        lean_logits = tiny_model(toks, attention_mask=mask)
        plain_logits = plain(toks, attention_mask=mask)
    real = mask.bool()
    assert torch.isfinite(lean_logits[real]).all()
    torch.testing.assert_close(lean_logits[real], plain_logits[real], atol=1e-5, rtol=1e-5)


def test_an_observed_inner_hook_point_fires_and_still_sees_the_same_model(tiny_model, tiny_model_dir):
    plain = plain_bridge(str(tiny_model_dir))
    toks, mask = padded_batch(tiny_model, TEXTS)
    seen: dict[str, list[torch.Tensor]] = {}

    def keep(x, hook):
        seen.setdefault(hook.name, []).append(x.detach().clone())

    names = ["blocks.0.attn.hook_pattern", "blocks.1.ln1.hook_scale", "blocks.0.attn.hook_rot_q"]
    with torch.no_grad():
        with tiny_model.hooks(fwd_hooks=[(n, keep) for n in names]):
            observed = tiny_model(toks, attention_mask=mask)
        with plain.hooks(fwd_hooks=[(n, keep) for n in names]):
            reference = plain(toks, attention_mask=mask)
    for n in names:
        assert len(seen[n]) == 2, f"{n} fired {len(seen[n])} times"
        a, b = seen[n]
        if n.endswith("hook_pattern"):
            # sdpa-style masks leave padded query rows to the bridge's own causal mask: compare real rows
            a, b = a[mask.bool()[:, None, :, None].expand_as(a)], b[mask.bool()[:, None, :, None].expand_as(b)]
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    real = mask.bool()
    torch.testing.assert_close(observed[real], reference[real], atol=1e-5, rtol=1e-5)


def uniform_pattern(pattern, hook):
    """An editing hook: uniform attention over every position a query may see."""
    keep = pattern > 0
    return keep / keep.sum(-1, keepdim=True)


def test_an_editing_inner_hook_changes_the_output(tiny_model):
    toks, mask = padded_batch(tiny_model, TEXTS[:1])
    with torch.no_grad():
        base = tiny_model(toks, attention_mask=mask)
        with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform_pattern)]):
            edited = tiny_model(toks, attention_mask=mask)
        again = tiny_model(toks, attention_mask=mask)
    assert (edited - base).abs().max() > 1e-3
    torch.testing.assert_close(again, base, atol=0, rtol=0)  # the hook is gone, so is its effect


@pytest.fixture
def bridge_calls(monkeypatch):
    """How many times any LinearBridge (a projection inside a layer) ran: 0 when every layer ran as its twin."""
    calls = []
    real = LinearBridge.forward

    def counted(self, *args, **kwargs):
        calls.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LinearBridge, "forward", counted)
    return calls


def layers_of(model, components) -> set[int]:
    where = {id(m): i for i, block in enumerate(model.blocks) for m in block.modules()}
    return {where[id(c)] for c in components}


def test_layers_run_as_plain_twins_unless_something_inside_is_observed(tiny_model, bridge_calls):
    toks, mask = padded_batch(tiny_model, TEXTS)
    with torch.no_grad():
        base = tiny_model(toks, attention_mask=mask)
        assert bridge_calls == []
        stream = [(f"blocks.{i}.hook_resid_{p}", lambda x, hook: x) for i in range(2) for p in ("pre", "mid", "post")]
        with tiny_model.hooks(fwd_hooks=stream):
            tiny_model(toks, attention_mask=mask)
        # hook_resid_mid is a hook point inside the layer: both layers take the bridge's path
        assert layers_of(tiny_model, bridge_calls) == {0, 1}
        bridge_calls.clear()
        with tiny_model.hooks(fwd_hooks=[(f"blocks.{i}.hook_resid_{p}", lambda x, hook: x)
                                         for i in range(2) for p in ("pre", "post")]):
            tiny_model(toks, attention_mask=mask)
        assert bridge_calls == [], "the block's own stream hooks are outside the layer"
        with tiny_model.hooks(fwd_hooks=[("blocks.1.hook_mlp_out", lambda x, hook: x)]):
            observed = tiny_model(toks, attention_mask=mask)
        layers = layers_of(tiny_model, bridge_calls)
        assert layers == {1}, f"only layer 1 is observed, yet layers {layers} took the bridge's path"
    torch.testing.assert_close(observed, base, atol=1e-5, rtol=1e-5)


def test_hooks_on_components_and_global_hooks_take_the_bridges_path(tiny_model_dir, bridge_calls):
    model = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    toks, mask = padded_batch(model, TEXTS)
    fired = []
    with torch.no_grad():
        base = model(toks, attention_mask=mask)
        handle = model.blocks[0].mlp.register_forward_hook(lambda m, a, o: fired.append("component"))
        try:
            on_component = model(toks, attention_mask=mask)
        finally:
            handle.remove()
        assert fired == ["component"] and bridge_calls
        bridge_calls.clear()
        handle = torch.nn.modules.module.register_module_forward_hook(
            lambda m, a, o: fired.append("global") if isinstance(m, LinearBridge) else None)
        try:
            with_global = model(toks, attention_mask=mask)
        finally:
            handle.remove()
        assert fired.count("global") == len(bridge_calls) > 0
        bridge_calls.clear()
        model.set_use_hook_mlp_in(True)  # a hook point of the block that fires from inside the layer
        seen = []
        with model.hooks(fwd_hooks=[("blocks.0.hook_mlp_in", lambda x, hook: seen.append(x.clone()))]):
            with_mlp_in = model(toks, attention_mask=mask)
        assert len(seen) == 1 and bridge_calls
    for out in (on_component, with_global, with_mlp_in):
        torch.testing.assert_close(out, base, atol=1e-5, rtol=1e-5)


def test_twins_share_the_weights_and_follow_a_dtype_change(tiny_model_dir):
    model = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    for block in model.blocks:
        layer = block.original_component
        twin = layer._emolib_twin
        assert twin is not layer
        assert {id(p) for p in twin.parameters()} == {id(p) for p in layer.parameters()}
        assert not any(isinstance(m, LinearBridge) for m in twin.modules())
    model.to(torch.bfloat16)
    toks, mask = padded_batch(model, TEXTS)
    with torch.no_grad():
        out = model(toks, attention_mask=mask)
    assert out.dtype == torch.bfloat16
    assert {p.dtype for b in model.blocks for p in b.original_component._emolib_twin.parameters()} == {torch.bfloat16}


def test_training_mode_takes_the_bridges_path(tiny_model_dir, bridge_calls):
    model = load_model(str(tiny_model_dir), device="cpu", dtype="float32")
    toks, mask = padded_batch(model, TEXTS)
    model.train()
    with torch.no_grad():
        model(toks, attention_mask=mask)
    assert layers_of(model, bridge_calls) == {0, 1}


def test_hooks_are_left_as_they_were(tiny_model):
    points = [m for m in tiny_model.modules() if isinstance(m, HookPoint)]
    assert points and not any(p._forward_hooks for p in points)


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_lean_capture_equals_the_bridge_on_the_embedded_models(name):
    model = real_model(name)
    assert model.emolib_lean["attention"] == model.emolib_lean["layers"] == model.cfg.n_layers
    plain = plain_bridge(model.emolib_source["location"])
    plain.tokenizer = model.tokenizer
    texts = ["He opened the letter and read it twice before he sat down.",
             "The rain had stopped by the time they reached the station, and the platform was empty."]
    ours = capture(model, texts, start=1, use_cache=False).activations
    ref = capture(plain, texts, start=1, use_cache=False).activations
    rel = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max()
    assert rel < 1e-4, f"largest relative difference {rel:.2e}"


def _gqa_inputs(dtype):
    g = torch.Generator().manual_seed(0)
    batch, heads, kv_heads, pos, d = 3, 4, 2, 7, 8
    q = torch.randn(batch, heads, pos, d, generator=g).to(dtype)
    k, v = (torch.randn(batch, kv_heads, pos, d, generator=g).to(dtype) for _ in range(2))
    lengths = torch.tensor([7, 5, 2])
    real = torch.arange(pos)[None] < lengths[:, None]
    mask = torch.ones(pos, pos, dtype=torch.bool).tril()[None, None] & real[:, None, None, :]
    module = torch.nn.Module()
    module.num_key_value_groups, module.is_causal = heads // kv_heads, True
    return module, q, k, v, mask


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_lean_attention_reads_shared_kv_heads_in_place_bit_for_bit(dtype, monkeypatch):
    from transformers.integrations import sdpa_attention

    from emolib.lean import _sdpa

    module, q, k, v, mask = _gqa_inputs(dtype)
    expected, _ = sdpa_attention.sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    repeats = []
    real_repeat = sdpa_attention.repeat_kv
    monkeypatch.setattr(sdpa_attention, "repeat_kv", lambda *a: (repeats.append(1), real_repeat(*a))[1])
    got, weights = _sdpa(module, q, k, v, mask, scaling=0.3)
    assert weights is None and got.shape == expected.shape == (3, 7, 4, 8)
    assert torch.equal(got, expected)
    assert not repeats  # the shared heads were read in place, not copied per query head


def test_lean_attention_leaves_other_cases_to_hf(monkeypatch):
    from transformers.integrations import sdpa_attention

    from emolib.lean import _sdpa

    module, q, k, v, mask = _gqa_inputs(torch.float32)
    calls = []
    real = sdpa_attention.sdpa_attention_forward
    monkeypatch.setattr(sdpa_attention, "sdpa_attention_forward",
                        lambda *a, **kw: (calls.append(1), real(*a, **kw))[1])
    # no mask (HF uses is_causal and enable_gqa itself), one query token (HF packs the heads), softcap
    _sdpa(module, q, k, v, None)
    _sdpa(module, q[:, :, -1:], k, v, mask[:, :, -1:])
    with pytest.raises(ValueError, match="softcap"):
        _sdpa(module, q, k, v, mask, softcap=30.0)
    assert len(calls) == 3
    # no grouped heads: nothing to gain
    module.num_key_value_groups = 1
    _sdpa(module, q, torch.cat([k, k], 1), torch.cat([v, v], 1), mask)
    assert len(calls) == 4


@pytest.mark.real_model
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_lean_attention_gives_hf_sdpa_capture_bit_for_bit(name, dtype):
    from emolib.models import native_bf16

    if dtype == "bfloat16" and not native_bf16("cpu"):
        pytest.skip("bfloat16 is emulated on this CPU (about 100x slower); the book runs float32 here")
    model = real_model(name, dtype=dtype)
    assert model.original_model.config._attn_implementation == LEAN_ATTENTION
    texts = ["He opened the letter and read it twice before he sat down.", "It rained.",
             "The rain had stopped by the time they reached the station, and the platform was empty."]
    ours = capture(model, texts, start=1, use_cache=False).activations
    model.original_model.set_attn_implementation("sdpa")
    try:
        hf = capture(model, texts, start=1, use_cache=False).activations
    finally:
        model.original_model.set_attn_implementation(LEAN_ATTENTION)
    assert torch.equal(ours, hf)
