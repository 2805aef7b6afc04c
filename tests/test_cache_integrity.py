"""Fault injection: every file emolib caches or saves is garbled at the same size, and must then be
rebuilt or refused with a clear error, never loaded silently."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from emolib import capture as cap
from emolib import models
from emolib.capture import CaptureCacheError, capture
from test_capture import TEXTS
from emolib.vectors import EmotionVectors, VectorFileError, VectorFileExistsError

ROOT = Path(__file__).resolve().parent.parent
KW = dict(layers=[0, 1], chunk_size=2, batch_size=2)  # 5 texts: 3 chunks of one batch each


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path / "cache"))


def flip_tensor_byte(path: Path) -> None:
    """Invert one byte in the middle of a safetensors file's tensor data (after the JSON header)."""
    blob = bytearray(path.read_bytes())
    data_start = 8 + int.from_bytes(blob[:8], "little")
    i = data_start + (len(blob) - data_start) // 2
    blob[i] ^= 0xFF
    path.write_bytes(bytes(blob))


def replace_same_size(path: Path, old: str, new: str) -> None:
    assert len(old) == len(new)
    blob = path.read_bytes()
    assert old.encode() in blob, f"{old!r} not in {path}"
    path.write_bytes(blob.replace(old.encode(), new.encode(), 1))


# --- capture cache ------------------------------------------------------------------------------

def interrupted_capture(model, monkeypatch, *, after_batches: int) -> Path:
    """Run a capture that is interrupted after ``after_batches`` forward batches; return its folder."""
    real = cap._forward_batch
    done = []

    def forward(*a, **k):
        if len(done) == after_batches:
            raise KeyboardInterrupt
        done.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cap, "_forward_batch", forward)
    with pytest.raises(KeyboardInterrupt):
        capture(model, TEXTS, **KW)
    monkeypatch.setattr(cap, "_forward_batch", real)
    return next((Path(cap.cache_root()) / "activations").iterdir())


@pytest.mark.parametrize("damage", ["tensor-data", "metadata"])
def test_garbled_chunk_is_recomputed_and_matches_a_fresh_capture(tiny_model, monkeypatch, capsys, damage):
    fresh = capture(tiny_model, TEXTS, use_cache=False, **KW)
    directory = interrupted_capture(tiny_model, monkeypatch, after_batches=2)
    chunk = directory / "chunk-000000-000002.safetensors"
    assert sorted(p.name for p in directory.iterdir()) == [chunk.name, "chunk-000002-000004.safetensors"]
    if damage == "tensor-data":
        flip_tensor_byte(chunk)
    else:  # a recorded token count changes, the file stays valid safetensors
        with safe_open(str(chunk), framework="pt") as fh:
            n = fh.metadata()["n_tokens"]
        replace_same_size(chunk, f'"n_tokens":"{n}"', f'"n_tokens":"{int(n) + 1 if n[-1] != "9" else int(n) - 1}"')
    capsys.readouterr()
    calls = []
    real = cap._forward_batch
    monkeypatch.setattr(cap, "_forward_batch", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = capture(tiny_model, TEXTS, **KW)
    assert len(calls) == 2, "the garbled chunk and the unfinished one are computed, the good one reused"
    err = [line for line in capsys.readouterr().err.splitlines() if "recomputing" in line]
    assert len(err) == 1 and chunk.name in err[0]
    assert not resumed.from_cache
    torch.testing.assert_close(resumed.activations, fresh.activations, rtol=0, atol=0)
    assert resumed.n_tokens == fresh.n_tokens
    cached = capture(tiny_model, TEXTS, **KW)
    assert cached.from_cache
    torch.testing.assert_close(cached.activations, fresh.activations, rtol=0, atol=0)


def test_chunks_of_another_chunk_size_are_never_reused(tiny_model, monkeypatch):
    """Chunk 1 of 5 rows is rows 3-4 with chunk_size 3 and rows 2-3 with chunk_size 2: same shape,
    other rows. A resume with another chunk_size must not mix them up."""
    fresh = capture(tiny_model, TEXTS, layers=[0, 1], use_cache=False)
    real = cap.atomic_write_bytes

    def write(path, data):
        if Path(path).name == "activations.safetensors":
            raise KeyboardInterrupt  # interrupted after every chunk, before the final file
        return real(path, data)

    monkeypatch.setattr(cap, "atomic_write_bytes", write)
    with pytest.raises(KeyboardInterrupt):
        capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=3)
    monkeypatch.setattr(cap, "atomic_write_bytes", real)
    resumed = capture(tiny_model, TEXTS, layers=[0, 1], chunk_size=2)
    torch.testing.assert_close(resumed.activations, fresh.activations)


def test_garbled_final_file_is_a_clear_error_naming_the_folder(tiny_model):
    first = capture(tiny_model, TEXTS, **KW)
    final = next((Path(cap.cache_root()) / "activations").glob("*/activations.safetensors"))
    flip_tensor_byte(final)
    with pytest.raises(CaptureCacheError, match="sha256") as info:
        capture(tiny_model, TEXTS, **KW)
    msg = str(info.value)
    assert f"delete {final.parent}" in msg and "\n" not in msg
    shutil.rmtree(final.parent)  # what the message says to do
    again = capture(tiny_model, TEXTS, **KW)
    assert not again.from_cache
    torch.testing.assert_close(again.activations, first.activations)


def test_capture_cache_of_version_1_is_not_read(tiny_model, monkeypatch):
    """Version 1 files carry no checksum; the version is part of the folder key, so they are never found."""
    current = cap.CAPTURE_VERSION
    monkeypatch.setattr(cap, "CAPTURE_VERSION", 1)
    capture(tiny_model, TEXTS, **KW)
    monkeypatch.setattr(cap, "CAPTURE_VERSION", current)
    assert current > 1 and not capture(tiny_model, TEXTS, **KW).from_cache


# --- model weight cache (emolib.models) ---------------------------------------------------------

def test_local_model_directory_uses_no_cache(tiny_model_dir, tmp_path):
    """``load_model(<dir>)`` boots the directory itself; only GGUF and embedded models are cached."""
    assert models._resolve_source(str(tiny_model_dir)) == ("directory", str(tiny_model_dir))
    assert not (tmp_path / "cache").exists()


def test_garbled_embedded_model_cache_is_rebuilt(fake_converter):
    calls = fake_converter
    d = models.ensure_embedded_cache("smollm2-135m-instruct", verbose=False)
    weights = d / "model.safetensors"
    good = weights.read_bytes()
    flip_tensor_byte(weights)
    assert weights.stat().st_size == len(good)
    with pytest.raises(models.CacheCorruptedError, match="sha256"):
        models.verify_cache_dir(d)
    models.ensure_embedded_cache("smollm2-135m-instruct", verbose=False)
    assert len(calls) == 2 and weights.read_bytes() == good


def test_garbled_gguf_model_cache_is_rebuilt(fake_converter, tmp_path):
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(models.GGUF_MAGIC + b" converted by a fake")
    calls = fake_converter
    kind, location = models._resolve_source(str(gguf))
    assert kind == "gguf" and len(calls) == 1
    flip_tensor_byte(Path(location) / "model.safetensors")
    assert models._resolve_source(str(gguf)) == (kind, location) and len(calls) == 2
    models.verify_cache_dir(Path(location))


# --- emotion vectors ----------------------------------------------------------------------------

def make_vectors(seed: int = 0, layers=(3, 7)) -> EmotionVectors:
    g = torch.Generator().manual_seed(seed)
    n = len(layers)
    return EmotionVectors(["calm", "fear", "glad"], list(layers), torch.randn(n, 3, 32, generator=g),
                          torch.randn(n, 32, generator=g), "tiny", "mean-diff", {"variance": 0.5}, "abc123",
                          extra={"chosen_layer": layers[0]})


def assert_same(a: EmotionVectors, b: EmotionVectors) -> None:
    assert (a.emotions, a.layers, a.model, a.method, a.extra) == (b.emotions, b.layers, b.model, b.method, b.extra)
    torch.testing.assert_close(a.vectors, b.vectors, rtol=0, atol=0)
    torch.testing.assert_close(a.center, b.center, rtol=0, atol=0)


def test_garbled_vector_tensors_are_refused(tmp_path):
    base = make_vectors().save(tmp_path / "vectors")
    flip_tensor_byte(tmp_path / "vectors.safetensors")
    with pytest.raises(VectorFileError, match="corrupted.*re-run"):
        EmotionVectors.load(base)


@pytest.mark.parametrize("old, new", [
    ('"calm",\n    "fear"', '"fear",\n    "calm"'),  # emotions reordered: every label wrong
    ('"glad"', '"gxad"'),                          # one byte of a name
    ("    3,\n    7", "    4,\n    8"),            # layers shifted
    ('"mean-diff"', '"mean-dife"'),
    ('"abc123"', '"abc124"'),
    ('"chosen_layer": 3', '"chosen_layer": 7'),
], ids=["emotions-reordered", "emotion-byte", "layers-shifted", "method", "data-hash", "extra"])
def test_edited_vector_labels_are_refused(tmp_path, old, new):
    base = make_vectors().save(tmp_path / "vectors")
    replace_same_size(tmp_path / "vectors.json", old, new)
    with pytest.raises(VectorFileError, match="labels in .*vectors.json.*do not match.*re-run"):
        EmotionVectors.load(base)


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.pop("emotions"), "emotions"),
    (lambda m: m.update(layers="7"), "layers"),
    (lambda m: m.update(layers=[3.0, 7]), "layers"),
    (lambda m: m.update(layers=[True, 7]), "layers"),
    (lambda m: m.update(emotions=[1, 2, 3]), "emotions"),
    (lambda m: m.update(d_model="32"), "d_model"),
    (lambda m: m.update(denoise=None), "denoise"),
    (lambda m: m.pop("tensors_sha256"), "tensors_sha256"),
    (lambda m: m.pop("content_sha256"), "content_sha256"),
], ids=["no-emotions", "layers-str", "layers-float", "layers-bool", "emotions-ints", "d_model-str", "denoise-null",
        "no-tensors-hash", "no-content-hash"])
def test_missing_or_malformed_vector_keys_name_the_file_and_key(tmp_path, edit, key):
    base = make_vectors().save(tmp_path / "vectors")
    jpath = tmp_path / "vectors.json"
    meta = json.loads(jpath.read_text())
    edit(meta)
    jpath.write_text(json.dumps(meta))
    with pytest.raises(VectorFileError, match=f"{re.escape(str(jpath))}.*'{key}'"):
        EmotionVectors.load(base)


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "not a JSON object"),
    ('{"format": 3}', "format 3"),
    ("\xff\xfe", "not valid JSON"),
])
def test_vector_json_that_is_not_ours_is_a_clear_error(tmp_path, text, message):
    base = make_vectors().save(tmp_path / "vectors")
    (tmp_path / "vectors.json").write_bytes(text.encode("latin-1"))
    with pytest.raises(VectorFileError, match=message):
        EmotionVectors.load(base)


def as_format_1(jpath: Path) -> None:
    meta = json.loads(jpath.read_text())
    del meta["content_sha256"]
    meta["format"] = 1
    jpath.write_text(json.dumps(meta))


def test_format_1_vectors_still_load_with_a_warning(tmp_path):
    vecs = make_vectors()
    base = vecs.save(tmp_path / "vectors")
    as_format_1(tmp_path / "vectors.json")
    with pytest.warns(UserWarning, match="format 1.*re-run the extraction chapter"):
        assert_same(EmotionVectors.load(base), vecs)
    flip_tensor_byte(tmp_path / "vectors.safetensors")  # the tensor hash of format 1 is still checked
    with pytest.raises(VectorFileError, match="corrupted"):
        EmotionVectors.load(base)


def test_saving_the_same_vectors_over_format_1_upgrades_it(tmp_path):
    vecs = make_vectors()
    base = vecs.save(tmp_path / "vectors")
    as_format_1(tmp_path / "vectors.json")
    vecs.save(base)  # identical content: no overwrite needed
    assert json.loads((tmp_path / "vectors.json").read_text())["format"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert_same(EmotionVectors.load(base), vecs)


@pytest.mark.parametrize("run", sorted(p.parent.name for p in (ROOT / "book" / "runs").glob("*/vectors.json")))
def test_committed_book_vectors_still_load(run):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the committed vectors are format 2: no fallback warning
        vecs = EmotionVectors.load(ROOT / "book" / "runs" / run / "vectors")
    assert vecs.emotions and vecs.layers


def test_user_suffixes_are_kept_and_load_takes_the_same_forms(tmp_path):
    a, b = make_vectors(0, layers=(3,)), make_vectors(1, layers=(12,))
    assert a.save(tmp_path / "vectors.layer3") == tmp_path / "vectors.layer3"
    b.save(str(tmp_path / "vectors.layer12"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "vectors.layer12.json", "vectors.layer12.safetensors", "vectors.layer3.json", "vectors.layer3.safetensors"]
    for form in ("vectors.layer3", "vectors.layer3.json", "vectors.layer3.safetensors"):
        assert_same(EmotionVectors.load(tmp_path / form), a)
        assert_same(EmotionVectors.load(str(tmp_path / form)), a)
    assert_same(EmotionVectors.load(tmp_path / "vectors.layer12.json"), b)
    c = make_vectors(2)
    assert c.save(tmp_path / "other.json") == tmp_path / "other"
    assert_same(EmotionVectors.load(tmp_path / "other.safetensors"), c)


def test_save_refuses_to_replace_different_vectors_without_overwrite(tmp_path):
    a, b = make_vectors(0), make_vectors(1)
    base = a.save(tmp_path / "vectors")
    a.save(tmp_path / "vectors.json")  # the same content again is fine
    with pytest.raises(VectorFileExistsError, match="different vectors.*overwrite=True"):
        b.save(base)
    assert_same(EmotionVectors.load(base), a)
    relabelled = make_vectors(0)
    relabelled.emotions = ["fear", "calm", "glad"]
    with pytest.raises(VectorFileExistsError):
        relabelled.save(base)
    with pytest.raises(TypeError):
        b.save(base, True)  # overwrite is keyword-only
    b.save(base, overwrite=True)
    assert_same(EmotionVectors.load(base), b)
    flip_tensor_byte(tmp_path / "vectors.safetensors")  # a damaged artifact is not silently replaced either
    with pytest.raises(VectorFileExistsError, match="unreadable.*overwrite=True"):
        b.save(base)
    b.save(base, overwrite=True)
    assert_same(EmotionVectors.load(base), b)
