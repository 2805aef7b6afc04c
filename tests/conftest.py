"""Shared fixtures: a tiny random-weight model built in seconds, and the two embedded real models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests load many models; compiling each would cost seconds to minutes. The compiled path has its own
# tests (tests/test_compile.py), which ask for it explicitly.
os.environ.setdefault("EMOLIB_COMPILE", "0")

ROOT = Path(__file__).resolve().parent.parent
EMBEDDED = ["gemma-3-270m", "smollm2-135m-instruct"]

_TINY_TEXT = [
    "The quick brown fox jumps over the lazy dog.",
    "She walked to the market and bought bread, apples and cheese.",
    "I could not sleep; the storm rattled the windows all night long.",
    "User: What is the capital of France?\n\nAssistant: Paris.",
]


def build_tiny_model_dir(path: Path, *, seed: int = 0, arch: str = "llama") -> Path:
    """Write a random-weight causal LM (2 layers, d_model 32) and a tiny BPE tokenizer to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers, decoders
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<bos>", "<eos>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_TINY_TEXT * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>", unk_token="<unk>")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=fast.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config).eval()
    model.config.architectures = ["LlamaForCausalLM"]
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from emolib.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


_real_models: dict = {}


def real_model(name: str, *, dtype: str = "float32"):
    """Load an embedded model once per test session and dtype (the first load may convert its GGUF).

    Float32 unless asked: tests compare with exact references, and must mean the same on a CI machine
    whose CPU has no native bfloat16 (where ``dtype="auto"`` would differ)."""
    from emolib.models import load_model

    if (name, dtype) not in _real_models:
        _real_models[name, dtype] = load_model(name, device="cpu", dtype=dtype)
    return _real_models[name, dtype]


@pytest.fixture(scope="session", params=EMBEDDED)
def embedded_model(request):
    return request.param, real_model(request.param)


@pytest.fixture
def fake_converter(tiny_model_dir, monkeypatch) -> list:
    """Stand in for the GGUF converter (the tiny model's files play the converted weights) and for the
    embedded packages' GGUF files; returns the list of GGUF paths it was asked to convert."""
    import shutil

    from emolib import models

    calls: list = []

    def fake_convert(gguf, out_dir):
        calls.append(gguf)
        for p in tiny_model_dir.iterdir():
            shutil.copy(p, out_dir / p.name)

    monkeypatch.setattr(models, "convert_gguf", fake_convert)
    monkeypatch.setattr(models.EmbeddedModel, "locate_gguf", lambda self, work: work / "fake.gguf")
    return calls
