"""Everyday mistakes end in one clear line that names the fix, fast, never in a traceback."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT
from emolib import _io, models
from emolib.models import CacheLocationError, ModelNotFoundError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path / "cache"))


def one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and "\n" not in msg, msg
    return msg


def refused_endpoint() -> str:
    """An http URL on a local port nobody listens on: connecting fails at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- D: atomic writes get ordinary permissions --------------------------------------------------

@pytest.fixture()
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)
    old = os.umask(0o022)
    yield set_umask
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750),
                                                       (0o002, 0o664, 0o775)], ids=["022", "027", "002"])
def test_atomic_writes_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert mode(_io.atomic_write_json(tmp_path / "metrics.json", {"a": 1})) == file_mode
    assert mode(_io.atomic_write_text(tmp_path / "metrics.json", "{}\n")) == file_mode, "rewrite"
    for overwrite in (False, True):
        with _io.atomic_dir(tmp_path / "run", overwrite=overwrite) as d:
            _io.atomic_write_bytes(d / "vectors.safetensors", b"x")
        assert mode(tmp_path / "run") == dir_mode
        assert mode(tmp_path / "run" / "vectors.safetensors") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "run"], "no temporary left behind"


# --- A: the cache folder ------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["file", "under-file"])
def test_cache_that_is_not_a_folder_is_one_clear_line(tmp_path, monkeypatch, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv("EMOLIB_CACHE", str(blocker if where == "file" else blocker / "sub"))
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("no conversion may start"))
    with pytest.raises(CacheLocationError) as info:
        models.ensure_embedded_cache("gemma-3-270m", verbose=False)
    msg = one_line(info.value)
    assert str(blocker) in msg and "set EMOLIB_CACHE to a writable folder" in msg


def test_unwritable_cache_is_one_clear_line(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    (locked / "cache" / "models").mkdir(parents=True)
    locked.chmod(0o500)
    (locked / "cache" / "models").chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere, so stand in for the kernel's answer to a user
        monkeypatch.setattr(models.os, "access", lambda path, mode: False)
    monkeypatch.setenv("EMOLIB_CACHE", str(locked / "cache"))
    try:
        with pytest.raises(CacheLocationError, match="is not writable; set EMOLIB_CACHE to a writable folder"):
            models.ensure_embedded_cache("gemma-3-270m", verbose=False)
    finally:
        (locked / "cache" / "models").chmod(0o700)
        locked.chmod(0o700)


def test_cli_reports_a_bad_cache_in_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "cache-file").write_text("x")
    monkeypatch.setenv("EMOLIB_CACHE", str(tmp_path / "cache-file"))
    assert models.main(["info", "gemma-3-270m"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "EMOLIB_CACHE" in err[0]


# --- A: names that are not models ---------------------------------------------------------------

def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "notes").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json") as info:
        models.load_model(str(tmp_path / "notes"), device="cpu")
    assert "gemma-3-270m" in one_line(info.value)


def test_folder_with_a_bad_config_is_not_a_model(tmp_path):
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="could not be loaded as a Hugging Face model folder") as info:
        models.load_model(str(tmp_path / "half"), device="cpu")
    one_line(info.value)


def test_gguf_that_is_not_gguf_is_refused_before_converting(tmp_path, monkeypatch):
    fake = tmp_path / "x.gguf"
    fake.write_text("this is a text file, not weights\n")
    monkeypatch.setattr(models, "convert_gguf", lambda *a: pytest.fail("no conversion may start"))
    with pytest.raises(ModelNotFoundError, match="not a GGUF file") as info:
        models.load_model(str(fake), device="cpu")
    one_line(info.value)
    assert not (tmp_path / "cache").exists(), "nothing is written to the cache"


def test_other_file_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelNotFoundError, match="is a file but not a .gguf file") as info:
        models.load_model(str(tmp_path / "weights.bin"), device="cpu")
    one_line(info.value)


def test_missing_path_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: pytest.fail("no hub call for a path"))
    with pytest.raises(ModelNotFoundError, match="no such file or folder, and not a valid hub id") as info:
        models.load_model(str(tmp_path / "no" / "such" / "model"), device="cpu")
    one_line(info.value)


# --- B: unknown names fail fast without the hub -------------------------------------------------

def test_unknown_name_fails_fast_and_suggests_the_nearest_embedded(monkeypatch):
    """The hub is unreachable here: the name fails in seconds, not after 35-50 s of hub retries."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError) as info:
        models.load_model("gemma-3-27m", device="cpu")
    assert time.perf_counter() - t0 < 10
    msg = one_line(info.value)
    assert msg.startswith("unknown model 'gemma-3-27m'; did you mean 'gemma-3-270m'? ")
    assert all(name in msg for name in models.EMBEDDED_MODELS)


def test_unreachable_endpoint_is_noticed_at_once(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", refused_endpoint())
    t0 = time.perf_counter()
    with pytest.raises(ModelNotFoundError, match="is unreachable") as info:
        models.load_model("smollm2-135m-instruc", device="cpu")
    assert time.perf_counter() - t0 < 10
    assert "did you mean 'smollm2-135m-instruct'?" in one_line(info.value)


def test_hub_probe_is_bounded_even_when_the_lookup_hangs(monkeypatch):
    monkeypatch.setattr(models.urllib.request, "urlopen", lambda *a, **k: time.sleep(4))
    t0 = time.perf_counter()
    assert models._hub_reachable("https://huggingface.co", timeout=0.5) is False
    assert time.perf_counter() - t0 < 3


def test_hf_hub_offline_makes_no_hub_call(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(models, "_hub_reachable", lambda *a, **k: pytest.fail("HF_HUB_OFFLINE=1 was ignored"))
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set") as info:
        models.load_model("no-such-org/no-such-model", device="cpu")
    assert "did you mean" not in one_line(info.value)


def test_hub_model_in_the_local_hub_cache_still_loads_offline(tmp_path, monkeypatch, tiny_model_dir):
    """Failing fast must not lock out a model downloaded earlier: its cached snapshot is used."""
    import shutil

    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--some-org--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    shutil.copytree(tiny_model_dir, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", refused_endpoint())
    model = models.load_model("some-org/tiny", device="cpu")
    assert model.emolib_source["kind"] == "hub" and Path(model.emolib_source["location"]) == snapshot
    assert model.cfg.n_layers == 2


# --- the command line: `error: <line>`, exit status 2, no traceback ------------------------------

def test_models_cli_prints_one_error_line(tmp_path):
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", EMOLIB_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "emolib.models", "info", str(tmp_path / "empty")],
                          capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1 and "no config.json" in lines[0], proc.stderr


@pytest.mark.parametrize("name", ["gemma-3-27m", "x.gguf"])
def test_models_cli_unknown_and_fake_gguf(tmp_path, monkeypatch, capsys, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.gguf").write_text(json.dumps({"not": "weights"}))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.main(["info", name]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
