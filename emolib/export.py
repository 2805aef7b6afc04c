"""Vectors outside the book: a run's steering vector as a llama.cpp control vector (or safetensors).

``python -m emolib.vectors export book/runs/gemma-3-270m --emotion calm --alpha 0.1 --out calm.gguf``
writes one F32 tensor ``direction.{L}`` per layer ``L``: the vector ``steer(..., alpha=0.1)`` adds,
``alpha * norm * unit(v)`` with ``norm`` the layer's mean residual norm (BOS excluded). Layer ``L``
is the output of block ``L`` counting from 0, the stream of ``blocks.L.hook_resid_post`` and of
Hugging Face ``hidden_states[L + 1]``, which is where llama.cpp adds ``direction.L``; so
``--control-vector-scaled calm.gguf:1.0`` applies the same push as the book's steering.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import torch

from emolib._io import atomic_write_bytes
from emolib.steering import steering_vector
from emolib.vectors import EmotionVectors, VectorFileError

__all__ = ["FORMATS", "MODEL_HINTS", "ExportError", "parse_emotions", "model_hint", "control_vector",
           "write_control_vector", "main"]

FORMATS = ("gguf", "safetensors")

# llama.cpp's architecture names (what its own control-vector generator writes as model_hint) for the
# embedded models, so no model or cache has to be opened to name them.
MODEL_HINTS: dict[str, str] = {"gemma-3-270m": "gemma3", "smollm2-135m-instruct": "llama"}

# Hugging Face model_type -> llama.cpp architecture, where the two differ (transformers names a
# text-only Gemma 3 "gemma3_text"; llama.cpp and its GGUF files call it "gemma3").
_HF_TO_LLAMA_CPP = {"gemma3_text": "gemma3"}

_ARCH = "controlvector"


class ExportError(ValueError):
    """The control vector cannot be made as asked (unknown emotion, missing run file, bad layer...)."""


# --- reading a run folder -------------------------------------------------------------------------
def _read_json(path: Path, *, chapter: str) -> dict:
    if not path.is_file():
        raise ExportError(f"{path} does not exist: run chapter {chapter} on this model first "
                          f"(python -m emolib.book run --model MODEL --chapters {chapter})")
    return json.loads(path.read_text())


def _load_vectors(run: Path) -> EmotionVectors:
    if not run.is_dir():
        raise ExportError(f"run folder {run} does not exist: run the book on the model first "
                          "(python -m emolib.book run --model MODEL; chapter 02_extraction writes the vectors, "
                          "04_steering the steering layer and norm)")
    if not (run / "vectors.json").is_file():
        raise ExportError(f"{run} holds no vectors.json: run chapter 02_extraction on this model first "
                          "(python -m emolib.book run --model MODEL --chapters 02_extraction)")
    try:
        return EmotionVectors.load(run / "vectors")
    except VectorFileError as exc:
        raise ExportError(str(exc)) from exc


def parse_emotions(spec: str) -> dict[str, float]:
    """``"calm"`` -> ``{"calm": 1.0}``; ``"calm:1,happy:0.5"`` -> weights (names may hold spaces)."""
    weights: dict[str, float] = {}
    for part in spec.split(","):
        name, sep, w = part.strip().rpartition(":")
        if not sep:
            name, w = w, "1"
        name = name.strip()
        try:
            weight = float(w)
        except ValueError:
            raise ExportError(f"cannot read the weight {w!r} in {part.strip()!r}; write NAME or NAME:WEIGHT") from None
        if not name or not math.isfinite(weight):
            raise ExportError(f"cannot read {part.strip()!r}; write NAME or NAME:WEIGHT with a finite weight")
        if name in weights:
            raise ExportError(f"emotion {name!r} is given twice")
        weights[name] = weight
    return weights


def _weights(emotions: str | Mapping[str, float] | Sequence[str]) -> dict[str, float]:
    if isinstance(emotions, str):
        return parse_emotions(emotions)
    if isinstance(emotions, Mapping):
        return {str(e): float(w) for e, w in emotions.items()}
    return {str(e): 1.0 for e in emotions}


def _check_emotions(weights: Mapping[str, float], known: Sequence[str]) -> None:
    if not weights:
        raise ExportError("no emotion given")
    for name in weights:
        if name not in known:
            near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = (f"; did you mean {', '.join(near)}?" if near
                    else f"; the run has {len(known)} emotions, e.g. {', '.join(known[:5])}")
            raise ExportError(f"unknown emotion {name!r}{hint}")


def _layer_count(metrics: Mapping) -> int:
    n = metrics.get("n_layers")
    if n is None:
        raise ExportError("metrics.json has no n_layers: run chapter 01_capture on this model first")
    return int(n)


def _norm(layer: int, steering: Mapping, metrics: Mapping) -> float:
    # The steering layer's norm comes from steering.json because chapters 4-5 steered with exactly it
    # (over neutral passages); other layers fall back to chapter 1's profile (over stories), which is
    # the same kind of mean but over other texts (about 4% lower at Gemma's layer 9).
    if steering.get("layer") == layer and "norm" in steering:
        return float(steering["norm"])
    by_layer = metrics.get("residual_norm_by_layer")
    if by_layer is None:
        raise ExportError(f"no residual norm for layer {layer}: metrics.json lacks residual_norm_by_layer "
                          "(run chapter 01_capture)")
    return float(by_layer[layer])


def _steering_vectors(run: Path, emotions: str | Mapping[str, float] | Sequence[str], alpha: float,
                      layers: Iterable[int] | int | None) -> tuple[dict[int, torch.Tensor], str, int]:
    """The vectors, the run's model name and its layer count (what the CLI writes as metadata)."""
    alpha = float(alpha)
    if not math.isfinite(alpha):
        raise ExportError(f"alpha must be a finite number, got {alpha}")
    vectors = _load_vectors(run)
    weights = _weights(emotions)
    _check_emotions(weights, vectors.emotions)
    metrics = _read_json(run / "metrics.json", chapter="01_capture")
    n_layers = _layer_count(metrics)
    steering_path = run / "steering.json"
    steering = json.loads(steering_path.read_text()) if steering_path.is_file() else {}
    if layers is None:
        if "layer" not in steering:
            raise ExportError(f"{steering_path} does not exist: run chapter 04_steering, or name the layer")
        layers = [int(steering["layer"])]
    layers = [layers] if isinstance(layers, int) else list(dict.fromkeys(int(x) for x in layers))
    if not layers:
        raise ExportError("no layer given")
    out = {}
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ExportError(f"layer {layer} does not exist: {vectors.model} has {n_layers} layers (0-{n_layers - 1})")
        if layer not in vectors.layers:
            raise ExportError(f"layer {layer} is not in {run / 'vectors.json'}, which holds layers {vectors.layers}")
        norm = _norm(layer, steering, metrics)
        out[layer] = steering_vector(vectors, weights, layer, alpha=alpha, norm=norm).float().contiguous()
    return out, vectors.model, n_layers


def control_vector(run_dir: str | Path, emotions: str | Mapping[str, float] | Sequence[str], *, alpha: float,
                   layers: Iterable[int] | int | None = None) -> dict[int, torch.Tensor]:
    """``{layer: [d_model] float32}``: what ``steer(..., emotions, alpha=alpha)`` adds at each layer.

    ``emotions`` is a name, ``"calm:1,happy:0.5"``, a list of names (weight 1) or ``{name: weight}``.
    ``layers`` defaults to the run's steering layer (``steering.json``).
    """
    return _steering_vectors(Path(run_dir), emotions, alpha, layers)[0]


# --- the model's architecture name ------------------------------------------------------------------
def model_hint(model: str) -> str | None:
    """llama.cpp's architecture name for ``model`` (a run's model name), without loading the model.

    Embedded models come from :data:`MODEL_HINTS`; a ``.gguf`` file from its ``general.architecture``;
    a local directory or a hub id already in the local Hugging Face cache from ``config.json``.
    None when it cannot be told.
    """
    if model in MODEL_HINTS:
        return MODEL_HINTS[model]
    path = Path(model).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        from gguf import GGUFReader

        field = GGUFReader(path).get_field("general.architecture")
        return field.contents() if field is not None else None
    config = path / "config.json"
    if not config.is_file():
        try:  # a hub id: only the local cache is read, never the network
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(model, "config.json")
        except Exception:  # noqa: BLE001 - a name that is no valid repo id simply has no hint
            cached = None
        if not isinstance(cached, str):
            return None
        config = Path(cached)
    model_type = json.loads(config.read_text()).get("model_type")
    return _HF_TO_LLAMA_CPP.get(model_type, model_type) if model_type else None


# --- writing ----------------------------------------------------------------------------------------
def _check_tensors(tensors: Mapping[int, torch.Tensor], *, format: str, layer_count: int) -> None:
    if format not in FORMATS:
        raise ExportError(f"unknown format {format!r}; use one of {', '.join(FORMATS)}")
    if not tensors:
        raise ExportError("no tensors to write")
    widths = {int(t.shape[-1]) for t in tensors.values()}
    for layer, t in tensors.items():
        if t.ndim != 1 or len(widths) != 1:
            raise ExportError(f"every tensor must be 1-D with one common width, got {tuple(t.shape)} at layer {layer}")
        if not torch.isfinite(t).all():
            raise ExportError(f"the vector at layer {layer} is not finite")
        if not 0 <= layer < layer_count:
            raise ExportError(f"layer {layer} does not exist in a model of {layer_count} layers")
        if format == "gguf" and layer == 0:
            # llama.cpp's loader refuses direction.0 (it adds nothing after block 0).
            raise ExportError("llama.cpp rejects a control vector at layer 0 (direction.0); choose a layer >= 1")


def _gguf_bytes(tensors: Mapping[int, torch.Tensor], *, model_hint: str, layer_count: int,
                extra: Mapping[str, str]) -> bytes:
    from gguf import GGUFWriter

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cv.gguf"
        writer = GGUFWriter(path, _ARCH)  # sets general.architecture = "controlvector"
        writer.add_string(f"{_ARCH}.model_hint", model_hint)
        writer.add_int32(f"{_ARCH}.layer_count", layer_count)
        for key, value in extra.items():
            writer.add_string(key, value)
        for layer in sorted(tensors):
            writer.add_tensor(f"direction.{layer}", tensors[layer].detach().cpu().float().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        return path.read_bytes()


def _safetensors_bytes(tensors: Mapping[int, torch.Tensor], *, model_hint: str, layer_count: int,
                       extra: Mapping[str, str]) -> bytes:
    from safetensors.torch import save

    meta = {"general.architecture": _ARCH, f"{_ARCH}.model_hint": model_hint,
            f"{_ARCH}.layer_count": str(layer_count), **extra}
    return save({f"direction.{layer}": tensors[layer].detach().cpu().float().contiguous() for layer in sorted(tensors)},
                metadata=meta)


def write_control_vector(tensors: Mapping[int, torch.Tensor], path: str | Path, *, format: str, model_hint: str,
                         layer_count: int, overwrite: bool = False, extra: Mapping[str, str] | None = None) -> Path:
    """Write ``{layer: [d_model]}`` as tensors ``direction.{layer}`` in llama.cpp's control-vector layout.

    ``format`` is ``"gguf"`` or ``"safetensors"`` (the same names, metadata as string metadata);
    ``extra`` adds string metadata (provenance). Written atomically: on any error nothing is written.
    """
    path = Path(path)
    _check_tensors(tensors, format=format, layer_count=layer_count)
    if path.is_dir():
        raise ExportError(f"{path} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite (overwrite=True) to replace it")
    make = _gguf_bytes if format == "gguf" else _safetensors_bytes
    blob = make(tensors, model_hint=model_hint, layer_count=layer_count, extra=dict(extra or {}))
    return atomic_write_bytes(path, blob)


# --- command line -----------------------------------------------------------------------------------
def _parse_layers(values: list[str] | None) -> list[int] | None:
    if not values:
        return None
    try:
        return [int(x) for v in values for x in v.split(",") if x.strip()]
    except ValueError:
        raise ExportError(f"--layer takes integers (repeat it or give a comma list), got {values}") from None


def _export(args: argparse.Namespace) -> str:
    fmt = args.format or ("safetensors" if Path(args.out).suffix.lower() == ".safetensors" else "gguf")
    if Path(args.out).exists() and not args.overwrite:
        raise FileExistsError(f"{args.out} already exists; pass --overwrite to replace it")
    tensors, model, n_layers = _steering_vectors(Path(args.run_dir), args.emotion, args.alpha,
                                                 _parse_layers(args.layer))
    hint = args.model_hint or model_hint(model)
    if not hint:
        raise ExportError(f"cannot tell the architecture of {model!r} without loading it; "
                          "pass --model-hint NAME (its llama.cpp architecture, e.g. llama)")
    extra = {"emolib.model": model, "emolib.emotions": args.emotion, "emolib.alpha": repr(args.alpha)}
    out = write_control_vector(tensors, args.out, format=fmt, model_hint=hint, layer_count=n_layers,
                               overwrite=args.overwrite, extra=extra)
    norms = ", ".join(f"direction.{L} (norm {t.norm():.2f})" for L, t in sorted(tensors.items()))
    usage = f"; in llama.cpp: --control-vector-scaled {out}:1.0" if fmt == "gguf" else ""
    return f"wrote {out}: {norms}, model_hint {hint}, layer_count {n_layers}{usage}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.vectors",
                                     description="Emotion vectors outside the book.")
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write a run's steering vector as a llama.cpp control vector",
                        description=__doc__.split("\n\n")[1])
    ex.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. book/runs/gemma-3-270m")
    ex.add_argument("--emotion", required=True, help='a name, or weights like "calm:1,happy:0.5"')
    ex.add_argument("--alpha", required=True, type=float, help="fraction of the layer's mean residual norm")
    ex.add_argument("--layer", action="append",
                    help="layer(s), repeatable or a comma list (default: the run's steering layer)")
    ex.add_argument("--format", choices=FORMATS, help="default: from --out's suffix, else gguf")
    ex.add_argument("--out", required=True, help="the file to write")
    ex.add_argument("--model-hint", help="the model's llama.cpp architecture name, when it cannot be looked up")
    ex.add_argument("--overwrite", action="store_true", help="replace an existing file")
    args = parser.parse_args(argv)
    try:
        print(_export(args))
    except (ExportError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
