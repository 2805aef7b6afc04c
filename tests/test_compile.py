"""emolib.lean's compiled twins: used for passes that only read, the same model to rounding level, the
eager twin or the bridge for everything else, and a clear choice where no compiler is available."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from conftest import real_model
from emolib import capture as capture_module
from emolib import lean
from emolib.capture import capture
from emolib.generation import generate_batch
from emolib.models import load_model
from test_lean import TEXTS, padded_batch, uniform_pattern

needs_compiler = pytest.mark.skipif(not lean.compile_available("cpu"),
                                    reason="torch.compile cannot build CPU kernels here (no C++ compiler)")


def test_resolve_compile_reads_the_environment(monkeypatch):
    monkeypatch.setattr(lean, "compile_available", lambda device_type="cpu": True)
    for value, want in (("0", False), ("off", False), ("1", True), ("auto", True), ("", True)):
        monkeypatch.setenv(lean.COMPILE_ENV, value)
        assert lean.resolve_compile(None) is want, value
    monkeypatch.setenv(lean.COMPILE_ENV, "sometimes")
    with pytest.raises(ValueError, match="EMOLIB_COMPILE"):
        lean.resolve_compile(None)
    # an explicit choice wins over the environment
    monkeypatch.setenv(lean.COMPILE_ENV, "0")
    assert lean.resolve_compile(True) is True


def test_without_a_compiler_auto_runs_eager_and_a_requirement_names_the_fix(monkeypatch, tiny_model_dir):
    monkeypatch.setattr(lean, "compile_available", lambda device_type="cpu": False)
    monkeypatch.setenv(lean.COMPILE_ENV, "auto")
    assert lean.resolve_compile(None) is False
    assert load_model(str(tiny_model_dir), device="cpu", dtype="float32").emolib_compiled is False
    for ask in ({"compile": True}, {}):
        if not ask:
            monkeypatch.setenv(lean.COMPILE_ENV, "1")
        with pytest.raises(lean.CompileUnavailable, match="C\\+\\+ compiler.*EMOLIB_COMPILE=0"):
            load_model(str(tiny_model_dir), device="cpu", dtype="float32", **ask)


def test_the_capture_cache_keeps_compiled_and_eager_activations_apart(tiny_model):
    ids = capture_module.tokenize(tiny_model, TEXTS)
    key = {}
    for compiled in (False, True):
        tiny_model.emolib_compiled = compiled
        key[compiled] = capture_module._cache_dir(tiny_model, ids, (0, 1), "mean", 1)
    tiny_model.emolib_compiled = False
    assert key[False] != key[True]


def test_the_book_runner_keys_say_whether_models_run_compiled(monkeypatch):
    from emolib import book

    monkeypatch.setattr(lean, "compile_available", lambda device_type="cpu": True)
    monkeypatch.setenv(lean.COMPILE_ENV, "0")
    assert book._compiled("cpu") is False
    monkeypatch.setenv(lean.COMPILE_ENV, "1")
    assert book._compiled("cpu") is True
    monkeypatch.setattr(lean, "compile_available", lambda device_type="cpu": False)
    with pytest.raises(book.RunRefused, match="EMOLIB_COMPILE=0"):
        book._compiled("cpu")


@pytest.fixture(scope="module")
def compiled_pair(tiny_model_dir):
    """The tiny model compiled and eager (float32), loaded anew: the session's tiny model stays eager."""
    return (load_model(str(tiny_model_dir), device="cpu", dtype="float32", compile=True),
            load_model(str(tiny_model_dir), device="cpu", dtype="float32", compile=False))


def _graphs() -> int:
    return counters["stats"]["unique_graphs"]


@needs_compiler
def test_capture_runs_the_compiled_layers_and_gives_the_same_activations(compiled_pair):
    fast, eager = compiled_pair
    assert fast.emolib_compiled and not eager.emolib_compiled
    torch._dynamo.reset()
    counters.clear()
    ours = capture(fast, TEXTS, start=1, use_cache=False).activations
    assert _graphs() >= 1, "the compiled forward never ran"
    ref = capture(eager, TEXTS, start=1, use_cache=False).activations
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # other batch sizes and widths: the graph is dynamic, not rebuilt per shape (Dynamo would specialise
    # a batch of one, and a batch without padding has no mask: each of those is a graph of its own)
    before = _graphs()
    longer = TEXTS + ["A much longer text than the others, so that the batch has another width."]
    capture(fast, longer, start=1, batch_size=2, use_cache=False)
    capture(fast, longer, start=1, batch_size=4, use_cache=False)
    assert _graphs() == before


@needs_compiler
def test_hooks_inside_a_compiled_layer_still_fire_and_edit(compiled_pair):
    fast, eager = compiled_pair
    toks, mask = padded_batch(fast, TEXTS[:1])
    seen = []
    with torch.no_grad():
        base = fast(toks, attention_mask=mask)
        with fast.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform_pattern),
                                   ("blocks.1.ln1.hook_scale", lambda x, hook: seen.append(x))]):
            edited = fast(toks, attention_mask=mask)
        with eager.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", uniform_pattern)]):
            reference = eager(toks, attention_mask=mask)
    assert len(seen) == 1
    assert (edited - base).abs().max() > 1e-3
    torch.testing.assert_close(edited, reference, atol=1e-5, rtol=1e-5)


@needs_compiler
def test_generation_and_hf_output_capture_keep_the_eager_path(compiled_pair):
    fast, eager = compiled_pair
    prompts = [fast.tokenizer(t)["input_ids"] for t in TEXTS]
    # greedy decoding with a key/value cache: the same tokens either way
    assert (generate_batch(fast, prompts, max_new_tokens=6, stop_at_eos=False)
            == generate_batch(eager, prompts, max_new_tokens=6, stop_at_eos=False))
    # transformers collects hidden states through hooks on the layers: they must fire
    toks, mask = padded_batch(fast, TEXTS)
    with torch.no_grad():
        ours = fast.original_model.model(input_ids=toks, attention_mask=mask, output_hidden_states=True)
        ref = eager.original_model.model(input_ids=toks, attention_mask=mask, output_hidden_states=True)
    assert len(ours.hidden_states) == len(ref.hidden_states) == fast.cfg.n_layers + 1
    for a, b in zip(ours.hidden_states, ref.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@needs_compiler
@pytest.mark.real_model
def test_compiled_capture_of_the_default_model_agrees_with_eager():
    """Rounding-level agreement on the real default model, in the book's dtype where this CPU has it."""
    from emolib.models import native_bf16

    dtype = "bfloat16" if native_bf16("cpu") else "float32"
    eager = real_model("gemma-3-270m", dtype=dtype)
    fast = load_model("gemma-3-270m", device="cpu", dtype=dtype, compile=True)
    texts = ["He opened the letter and read it twice before he sat down, and then he read it again.",
             "The rain had stopped by the time they reached the station, and the platform was empty.",
             "She laughed when the dog stole the last sandwich from the picnic blanket."]
    ours = capture(fast, texts, start=1, use_cache=False).activations
    ref = capture(eager, texts, start=1, use_cache=False).activations
    cos = torch.nn.functional.cosine_similarity(ours, ref, dim=-1)
    assert cos.min() > (0.9999 if dtype == "bfloat16" else 0.999999), f"smallest cosine {cos.min():.6f}"
    assert not torch.equal(ours, ref), "identical to the eager pass: the compiled forward did not run"
