"""The two embedded real models: the bridge agrees with Hugging Face, hooks are scoped,
cached generation is exact, and a second load reuses the converted cache."""

from __future__ import annotations

import pytest
import torch

from emolib import models
from emolib.chat import encode, encode_chat
from emolib.hooks import count_live_hooks, residual_edit

pytestmark = pytest.mark.real_model

PROMPT = "The old lighthouse keeper climbed the stairs and looked out over the sea."
# fp32 throughout; the bridge forces eager attention, so HF is loaded eager too.
ATOL = 1e-4


@pytest.fixture(scope="module")
def hf_models():
    from transformers import AutoModelForCausalLM

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = AutoModelForCausalLM.from_pretrained(
                str(models.embedded_cache_dir(name)), dtype=torch.float32, attn_implementation="eager").eval()
        return cache[name]
    return get


def test_shapes_match_the_model_card(embedded_model):
    name, model = embedded_model
    expected = {"gemma-3-270m": (18, 640, 262144), "smollm2-135m-instruct": (30, 576, 49152)}[name]
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_vocab) == expected


def test_bridge_logits_and_residuals_equal_hugging_face(embedded_model, hf_models):
    name, model = embedded_model
    hf = hf_models(name)
    toks = torch.tensor([encode(model.tokenizer, PROMPT)])
    with torch.no_grad():
        out = hf(toks, output_hidden_states=True)
        logits, cache = model.run_with_cache(toks, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert (logits - out.logits).abs().max().item() < ATOL * max(1.0, out.logits.abs().max().item())
    # HF's hidden_states[L + 1] is the output of block L; its last entry has the final norm applied.
    for layer in range(model.cfg.n_layers - 1):
        ours = cache[f"blocks.{layer}.hook_resid_post"]
        ref = out.hidden_states[layer + 1]
        scale = ref.abs().max().item()
        assert (ours - ref).abs().max().item() < ATOL * max(1.0, scale), f"layer {layer}"


def test_residual_addition_changes_logits_and_leaves_no_hook(embedded_model):
    name, model = embedded_model
    toks = torch.tensor([encode(model.tokenizer, PROMPT)])
    layer = model.cfg.n_layers // 2
    with torch.no_grad():
        base = model(toks)
        v = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(0)) * 50
        with residual_edit(model, {layer: v}):
            steered = model(toks)
        assert count_live_hooks(model) == 0
        assert (steered - base).abs().max().item() > 1e-2
        with pytest.raises(RuntimeError, match="boom"):
            with residual_edit(model, {layer: v}):
                raise RuntimeError("boom")
        assert count_live_hooks(model) == 0
        assert torch.allclose(model(toks), base)


def test_greedy_generation_with_kv_cache_equals_without(embedded_model):
    """Catches the transformers>=5.24 trap, where cached generation produced garbage."""
    name, model = embedded_model
    if model.tokenizer.chat_template:
        ids = encode_chat(model.tokenizer, [{"role": "user", "content": "Name three colours."}])
    else:
        ids = encode(model.tokenizer, "Here are three colours:")
    toks = torch.tensor([ids])
    kw = dict(max_new_tokens=12, do_sample=False, stop_at_eos=False, verbose=False)
    with torch.no_grad():
        cached = model.generate(toks, use_past_kv_cache=True, **kw)
        uncached = model.generate(toks, use_past_kv_cache=False, **kw)
    assert torch.equal(cached, uncached), (model.to_string(cached[0]), model.to_string(uncached[0]))
    assert cached.shape[1] == toks.shape[1] + 12


def test_second_load_hits_the_cache(embedded_model, monkeypatch):
    name, _ = embedded_model
    models.verify_cache_dir(models.embedded_cache_dir(name))

    def no_conversion(*args, **kwargs):
        raise AssertionError("a second load must not convert the GGUF again")
    monkeypatch.setattr(models, "convert_gguf", no_conversion)
    again = models.load_model(name, device="cpu")
    assert again.emolib_source["location"] == str(models.embedded_cache_dir(name))


def test_info_cli_reports_gemma_shape(capsys):
    assert models.main(["info", "gemma-3-270m"]) == 0
    out = capsys.readouterr().out
    assert "n_layers           18" in out and "d_model            640" in out


def test_last_token_logits_match_the_full_forward(embedded_model):
    from emolib.scoring import last_token_logits

    name, model = embedded_model
    ids = [encode(model.tokenizer, PROMPT), encode(model.tokenizer, "Short one.")]
    width = max(map(len, ids))
    pad = model.tokenizer.pad_token_id
    toks = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    with torch.no_grad():
        fast = last_token_logits(model, toks, mask)
        for i, x in enumerate(ids):
            full = model(torch.tensor([x]))[0, -1]
            assert (fast[i] - full).abs().max().item() < ATOL * max(1.0, full.abs().max().item())
    assert count_live_hooks(model) == 0
