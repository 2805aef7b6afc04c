"""emolib.lean: the bridge's norms and attention without observation-only arithmetic give the same model,
and the bridge's own forward comes back the moment an inner hook point is observed."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.hook_points import HookPoint

from conftest import real_model
from emolib.capture import capture
from emolib.lean import LEAN_ATTENTION


def plain_bridge(location: str, dtype=torch.float32):
    """The bridge as TransformerLens boots it, without emolib.lean."""
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(location, device="cpu", dtype=dtype).eval()


def padded_batch(model, texts):
    ids = [model.tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    toks = torch.full((len(ids), width), model.tokenizer.pad_token_id or 0)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, row in enumerate(ids):
        toks[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return toks, mask


TEXTS = ["The quick brown fox jumps over the lazy dog.", "I could not sleep.",
         "She walked to the market and bought bread, apples and cheese."]


def test_every_norm_and_attention_is_lean(tiny_model):
    counts = tiny_model.emolib_lean
    # 2 layers x (2 norms) + the final norm; 2 attention blocks
    assert counts == {"norms": 5, "attention": 2}
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


def test_an_editing_inner_hook_changes_the_output(tiny_model):
    toks, mask = padded_batch(tiny_model, TEXTS[:1])

    def uniform(pattern, hook):
        keep = pattern > 0
        return keep / keep.sum(-1, keepdim=True)

    with torch.no_grad():
        base = tiny_model(toks, attention_mask=mask)
        with tiny_model.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform)]):
            edited = tiny_model(toks, attention_mask=mask)
        again = tiny_model(toks, attention_mask=mask)
    assert (edited - base).abs().max() > 1e-3
    torch.testing.assert_close(again, base, atol=0, rtol=0)  # the hook is gone, so is its effect


def test_hooks_are_left_as_they_were(tiny_model):
    points = [m for m in tiny_model.modules() if isinstance(m, HookPoint)]
    assert points and not any(p._forward_hooks for p in points)


@pytest.mark.real_model
@pytest.mark.parametrize("name", ["gemma-3-270m", "smollm2-135m-instruct"])
def test_lean_capture_equals_the_bridge_on_the_embedded_models(name):
    model = real_model(name)
    assert model.emolib_lean["attention"] == model.cfg.n_layers
    plain = plain_bridge(model.emolib_source["location"])
    plain.tokenizer = model.tokenizer
    texts = ["He opened the letter and read it twice before he sat down.",
             "The rain had stopped by the time they reached the station, and the platform was empty."]
    ours = capture(model, texts, start=1, use_cache=False).activations
    ref = capture(plain, texts, start=1, use_cache=False).activations
    rel = ((ours - ref).norm(dim=-1) / ref.norm(dim=-1)).max()
    assert rel < 1e-4, f"largest relative difference {rel:.2e}"
