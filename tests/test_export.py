"""Control-vector export: GGUF and safetensors files that hold exactly the book's steering vector."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from safetensors import safe_open

from emolib.export import ExportError, control_vector, main, model_hint, write_control_vector
from emolib.vectors import EmotionVectors

ROOT = Path(__file__).resolve().parent.parent
EMOTIONS = ["calm", "happy", "at ease", "desperate"]
LAYERS = [0, 2, 3]
D = 16
STEER_NORM = 7.5  # steering.json's norm for layer 2; metrics' profile says 7.0 there on purpose
PROFILE = [1.0, 4.0, 7.0, 9.0, 12.0]


def make_run(folder: Path, model: str = "smollm2-135m-instruct") -> Path:
    """A run folder as the chapters leave it: vectors, steering.json and metrics.json (5 layers)."""
    g = torch.Generator().manual_seed(0)
    EmotionVectors(EMOTIONS, LAYERS, torch.randn(len(LAYERS), len(EMOTIONS), D, generator=g),
                   torch.zeros(len(LAYERS), D), model, "mean-diff").save(folder / "vectors")
    (folder / "steering.json").write_text(json.dumps({"layer": 2, "norm": STEER_NORM, "usable_alpha_max": 0.2}))
    (folder / "metrics.json").write_text(json.dumps({"n_layers": len(PROFILE), "residual_norm_by_layer": PROFILE}))
    return folder


@pytest.fixture()
def run(tmp_path) -> Path:
    return make_run(tmp_path / "runs" / "smollm2-135m-instruct")


def expected(run: Path, emotion: str, layer: int, alpha: float, norm: float) -> np.ndarray:
    v = EmotionVectors.load(run / "vectors").vector(emotion, layer)
    return (alpha * norm * v / v.norm()).numpy()


def gguf_string(reader: GGUFReader, key: str) -> str:
    return reader.get_field(key).contents()


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_gguf_holds_the_steering_vector_and_llama_cpp_metadata(run, tmp_path):
    out = tmp_path / "calm.gguf"
    assert main(["export", str(run), "--emotion", "calm", "--alpha", "0.1", "--layer", "2,3", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    assert gguf_string(reader, "general.architecture") == "controlvector"
    assert gguf_string(reader, "controlvector.model_hint") == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == len(PROFILE)
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.2", "direction.3"]
    for layer, norm in ((2, STEER_NORM), (3, PROFILE[3])):  # steering layer from steering.json, others the profile
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == GGMLQuantizationType.F32
        assert list(t.shape) == [D]
        np.testing.assert_allclose(np.asarray(t.data), expected(run, "calm", layer, 0.1, norm), rtol=0, atol=1e-6)
    assert files_in(tmp_path) == ["calm.gguf", "runs"]  # no temporary file left behind


def test_safetensors_holds_the_same_tensors_and_metadata(run, tmp_path):
    out = tmp_path / "mix.safetensors"
    assert main(["export", str(run), "--emotion", "calm:1,at ease:0.5", "--alpha", "-0.2", "--out", str(out)]) == 0
    with safe_open(out, framework="pt") as f:
        assert list(f.keys()) == ["direction.2"]
        meta = f.metadata()
        t = f.get_tensor("direction.2")
    assert meta["general.architecture"] == "controlvector"
    assert meta["controlvector.model_hint"] == "llama"
    assert meta["controlvector.layer_count"] == str(len(PROFILE))
    assert t.dtype == torch.float32 and list(t.shape) == [D]
    vec = EmotionVectors.load(run / "vectors")
    want = -0.2 * STEER_NORM * (vec.vector("calm", 2, unit=True) + 0.5 * vec.vector("at ease", 2, unit=True))
    torch.testing.assert_close(t, want, rtol=0, atol=1e-6)


def test_python_api_matches_the_cli_defaults(run, tmp_path):
    tensors = control_vector(run, {"happy": 1.0}, alpha=0.3)
    assert list(tensors) == [2]  # the steering layer
    np.testing.assert_allclose(tensors[2].numpy(), expected(run, "happy", 2, 0.3, STEER_NORM), atol=1e-6)
    path = write_control_vector(tensors, tmp_path / "h.gguf", format="gguf", model_hint="llama", layer_count=5)
    assert path == tmp_path / "h.gguf" and path.is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--emotion", "clam"], "unknown emotion 'clam'; did you mean calm"),
    (["--emotion", "calm", "--layer", "7"], "layer 7 does not exist"),
    (["--emotion", "calm", "--layer", "1"], "layer 1 is not in"),
    (["--emotion", "calm", "--layer", "0"], "rejects a control vector at layer 0"),
    (["--emotion", "calm", "--alpha", "nan"], "alpha must be a finite number"),
])
def test_bad_requests_fail_with_one_line_and_write_nothing(run, tmp_path, capsys, args, message):
    out = tmp_path / "x.gguf"
    argv = ["export", str(run), "--out", str(out), *args]
    if "--alpha" not in args:
        argv += ["--alpha", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not out.exists() and files_in(tmp_path) == ["runs"]


def test_layer_zero_is_fine_in_safetensors(run, tmp_path):
    out = tmp_path / "z.safetensors"
    assert main(["export", str(run), "--emotion", "calm", "--alpha", "0.1", "--layer", "0", "--out", str(out)]) == 0
    with safe_open(out, framework="pt") as f:
        assert list(f.keys()) == ["direction.0"]


def test_missing_run_folder_names_the_chapter(tmp_path, capsys):
    out = tmp_path / "x.gguf"
    assert main(["export", str(tmp_path / "nope"), "--emotion", "calm", "--alpha", "0.1", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ExportError, match="02_extraction"):
        control_vector(tmp_path / "nope", "calm", alpha=0.1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="02_extraction"):
        control_vector(tmp_path / "empty", "calm", alpha=0.1)
    assert not out.exists()


def test_typed_errors_from_the_python_api(run, tmp_path):
    with pytest.raises(ExportError, match="did you mean"):
        control_vector(run, "hapy", alpha=0.1)
    with pytest.raises(ExportError, match="layer 9 does not exist"):
        control_vector(run, "calm", alpha=0.1, layers=[9])
    with pytest.raises(ExportError, match="finite"):
        control_vector(run, "calm", alpha=math.inf)
    with pytest.raises(ExportError, match="layer 0"):
        write_control_vector({0: torch.ones(D)}, tmp_path / "a.gguf", format="gguf", model_hint="llama", layer_count=5)
    with pytest.raises(ExportError, match="unknown format"):
        write_control_vector({1: torch.ones(D)}, tmp_path / "a.bin", format="npy", model_hint="llama", layer_count=5)
    assert files_in(tmp_path) == ["runs"]


def test_refuses_to_overwrite_unless_asked(run, tmp_path, capsys):
    out = tmp_path / "calm.gguf"
    out.write_bytes(b"keep me")
    argv = ["export", str(run), "--emotion", "calm", "--alpha", "0.1", "--out", str(out)]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    with pytest.raises(FileExistsError):
        write_control_vector({1: torch.ones(D)}, out, format="gguf", model_hint="llama", layer_count=5)
    assert main([*argv, "--overwrite"]) == 0
    assert GGUFReader(out).tensors[0].name == "direction.2"


def test_model_hints_without_loading_a_model(tmp_path):
    assert model_hint("gemma-3-270m") == "gemma3"
    assert model_hint("smollm2-135m-instruct") == "llama"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gemma3_text"}))
    assert model_hint(str(tmp_path)) == "gemma3"  # transformers' name mapped to llama.cpp's
    assert model_hint(str(tmp_path / "missing")) is None


def test_unknown_model_needs_a_model_hint(tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "elsewhere", model=str(tmp_path / "somewhere-else"))
    argv = ["export", str(run), "--emotion", "calm", "--alpha", "0.1", "--out", str(tmp_path / "x.gguf")]
    assert main(argv) == 2
    assert "--model-hint" in capsys.readouterr().err
    assert main([*argv, "--model-hint", "qwen2"]) == 0
    assert GGUFReader(tmp_path / "x.gguf").get_field("controlvector.model_hint").contents() == "qwen2"


def test_committed_gemma_run_exports_calm_at_its_steering_norm(tmp_path):
    run = ROOT / "book" / "runs" / "gemma-3-270m"
    steering = json.loads((run / "steering.json").read_text())
    out = tmp_path / "calm.gguf"
    assert main(["export", str(run), "--emotion", "calm", "--alpha", "0.1", "--out", str(out)]) == 0
    reader = GGUFReader(out)
    (t,) = reader.tensors
    assert t.name == f"direction.{steering['layer']}"
    assert float(np.linalg.norm(np.asarray(t.data))) == pytest.approx(0.1 * steering["norm"], rel=1e-3)
    assert gguf_string(reader, "controlvector.model_hint") == "gemma3"
    n_layers = json.loads((run / "metrics.json").read_text())["n_layers"]
    assert reader.get_field("controlvector.layer_count").contents() == n_layers


def test_python_dash_m_emolib_vectors_dispatches_to_export(run, tmp_path):
    out = tmp_path / "calm.gguf"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "emolib.vectors", "export", str(run), "--emotion", "calm",
                           "--alpha", "0.1", "--out", str(out)], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "--control-vector-scaled" in done.stdout and out.is_file()
