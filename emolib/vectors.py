"""``EmotionVectors``: one direction per emotion per layer, saved as safetensors plus JSON."""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from emolib._io import atomic_write_bytes, atomic_write_json

__all__ = ["EmotionVectors", "VectorFileError", "VectorFileExistsError", "library_versions"]

# Format 2 adds ``content_sha256`` (tensors and labels together); format 1 files are still read.
FORMAT = 2


class VectorFileError(ValueError):
    """A vector file is missing, corrupted, or belongs to another model."""


class VectorFileExistsError(VectorFileError):
    """``save`` would replace different vectors already at that path."""


def library_versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for pkg in ("emolib", "torch", "transformers", "transformer-lens"):
        try:
            out[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - a missing distribution is recorded, not fatal
            out[pkg] = "unknown"
    return out


@dataclass
class EmotionVectors:
    """Emotion directions for one model.

    ``vectors`` is ``[n_layers, n_emotions, d_model]`` (layer ``i`` of it is model layer
    ``layers[i]``); ``center`` is ``[n_layers, d_model]``, the point the directions start from
    (the mean over emotions of the per-emotion mean activation), subtracted before projecting.
    """

    emotions: list[str]
    layers: list[int]
    vectors: torch.Tensor
    center: torch.Tensor
    model: str
    method: str
    denoise: dict = field(default_factory=dict)
    data_hash: str = ""
    versions: dict = field(default_factory=library_versions)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        L, E = len(self.layers), len(self.emotions)
        if self.vectors.ndim != 3 or self.vectors.shape[:2] != (L, E):
            raise ValueError(f"vectors must be [n_layers={L}, n_emotions={E}, d_model], got {tuple(self.vectors.shape)}")
        if tuple(self.center.shape) != (L, self.vectors.shape[2]):
            raise ValueError(f"center must be [{L}, {self.vectors.shape[2]}], got {tuple(self.center.shape)}")
        if len(set(self.emotions)) != E:
            raise ValueError("emotion names must be unique")

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[2])

    def _li(self, layer: int) -> int:
        try:
            return self.layers.index(layer)
        except ValueError:
            raise KeyError(f"layer {layer} not in these vectors (layers {self.layers})") from None

    def at(self, layer: int) -> torch.Tensor:
        """``[n_emotions, d_model]`` at a model layer."""
        return self.vectors[self._li(layer)]

    def vector(self, emotion: str, layer: int, *, unit: bool = False) -> torch.Tensor:
        if emotion not in self.emotions:
            raise KeyError(f"unknown emotion {emotion!r}")
        v = self.at(layer)[self.emotions.index(emotion)]
        return v / v.norm() if unit else v

    def project(self, acts: torch.Tensor, layer: int) -> torch.Tensor:
        """Scores ``[n, n_emotions]``: centred activations ``[n, d_model]`` onto unit vectors."""
        if acts.shape[-1] != self.d_model:
            raise ValueError(f"activations have width {acts.shape[-1]}, vectors have d_model {self.d_model}")
        v = self.at(layer)
        unit = v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return (acts.float() - self.center[self._li(layer)]) @ unit.T

    def select_layers(self, layers: list[int]) -> "EmotionVectors":
        idx = [self._li(layer) for layer in layers]
        return EmotionVectors(list(self.emotions), list(layers), self.vectors[idx].clone(), self.center[idx].clone(),
                              self.model, self.method, dict(self.denoise), self.data_hash, dict(self.versions),
                              dict(self.extra))

    def check_model(self, model) -> None:
        """Raise if these vectors cannot belong to ``model`` (another width)."""
        d = model.cfg.d_model
        if d != self.d_model:
            raise VectorFileError(f"these vectors were extracted from {self.model!r} (d_model {self.d_model}); "
                                  f"the model given has d_model {d}. Extract vectors for this model first.")
        if max(self.layers) >= model.cfg.n_layers:
            raise VectorFileError(f"these vectors use layer {max(self.layers)}; the model has {model.cfg.n_layers} layers")

    # --- persistence ------------------------------------------------------------------------
    def _labels(self) -> dict:
        return {"emotions": list(self.emotions), "layers": list(self.layers), "d_model": self.d_model,
                "model": self.model, "method": self.method, "denoise": self.denoise, "data_hash": self.data_hash,
                "extra": self.extra}

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write ``<path>.safetensors`` (tensors) and ``<path>.json`` (labels, provenance and hashes).

        ``path`` may end in ``.json`` or ``.safetensors``; any other suffix is part of the name. An
        existing artifact at ``path`` holding different vectors is replaced only with ``overwrite``.
        Returns the path without extension (what :meth:`load` takes).
        """
        base, jpath, tpath = _paths(path)
        blob = st_save({"vectors": self.vectors.float().contiguous(), "center": self.center.float().contiguous()})
        tensors_sha = hashlib.sha256(blob).hexdigest()
        # Normalise through JSON so the hash matches what load() will read back (tuples, int keys).
        labels = json.loads(json.dumps(self._labels()))
        content = _content_sha256(tensors_sha, labels)
        if not overwrite and (jpath.exists() or tpath.exists()):
            try:
                existing = _read(jpath, tpath, warn=False)[1]
            except VectorFileError as exc:
                raise VectorFileExistsError(f"{base} already exists and is unreadable ({exc}); pass overwrite=True "
                                            "to replace it") from None
            if existing != content:
                raise VectorFileExistsError(f"{base} already holds different vectors; pass overwrite=True to "
                                            "replace them, or save under another name")
        meta = {"format": FORMAT, **labels, "versions": self.versions, "tensors_sha256": tensors_sha,
                "content_sha256": content}
        atomic_write_bytes(tpath, blob)
        atomic_write_json(jpath, meta)
        return base

    @classmethod
    def load(cls, path: str | Path, *, model=None) -> "EmotionVectors":
        """Read vectors written by :meth:`save` (``path`` with or without ``.json``/``.safetensors``)."""
        _, jpath, tpath = _paths(path)
        vec = _read(jpath, tpath, warn=True)[0]
        if model is not None:
            vec.check_model(model)
        return vec


def _paths(path: str | Path) -> tuple[Path, Path, Path]:
    """``(base, base.json, base.safetensors)``; only our own extensions are stripped, so that
    ``vectors.layer3`` and ``vectors.layer12`` stay two artifacts."""
    p = Path(path)
    base = p.with_suffix("") if p.suffix in (".json", ".safetensors") else p
    return base, base.with_name(base.name + ".json"), base.with_name(base.name + ".safetensors")


def _content_sha256(tensors_sha256: str, labels: dict) -> str:
    canonical = json.dumps(labels, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(f"{tensors_sha256}\n{canonical}".encode()).hexdigest()


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


# Label keys, the check each value must pass, and what it should be (for the error message).
_KEYS: dict[str, tuple] = {
    "emotions": (lambda v: isinstance(v, list) and all(isinstance(e, str) for e in v), "a list of strings"),
    "layers": (lambda v: isinstance(v, list) and all(_is_int(x) for x in v), "a list of ints"),
    "d_model": (_is_int, "an int"),
    "model": (lambda v: isinstance(v, str), "a string"),
    "method": (lambda v: isinstance(v, str), "a string"),
    "denoise": (lambda v: isinstance(v, dict), "an object"),
    "data_hash": (lambda v: isinstance(v, str), "a string"),
    "extra": (lambda v: isinstance(v, dict), "an object"),
    "versions": (lambda v: isinstance(v, dict), "an object"),
    "tensors_sha256": (lambda v: isinstance(v, str), "a string"),
}


def _read(jpath: Path, tpath: Path, *, warn: bool) -> tuple[EmotionVectors, str]:
    """Load and verify one artifact; return it with its content hash (tensors and labels)."""
    for p in (jpath, tpath):
        if not p.is_file():
            raise VectorFileError(f"{p} does not exist; run the extraction chapter (or save vectors) first")
    try:
        meta = json.loads(jpath.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise VectorFileError(f"{jpath} is not valid JSON ({exc}); re-run the extraction chapter") from exc
    if not isinstance(meta, dict):
        raise VectorFileError(f"{jpath} is not a JSON object; re-run the extraction chapter")
    fmt = meta.get("format")
    if fmt not in (1, FORMAT):
        raise VectorFileError(f"{jpath} has format {fmt!r}; this emolib reads formats 1 and {FORMAT}: re-run the "
                              "extraction chapter")
    keys = dict(_KEYS, content_sha256=(lambda v: isinstance(v, str), "a string")) if fmt == FORMAT else _KEYS
    for key, (ok, what) in keys.items():
        if key not in meta:
            raise VectorFileError(f"{jpath} has no {key!r}; re-run the extraction chapter")
        if not ok(meta[key]):
            raise VectorFileError(f"{jpath}: {key!r} must be {what}; re-run the extraction chapter")
    blob = tpath.read_bytes()
    tensors_sha = hashlib.sha256(blob).hexdigest()
    if tensors_sha != meta["tensors_sha256"]:
        raise VectorFileError(f"{tpath} does not match {jpath.name} (corrupted or from another save); "
                              "re-run the extraction chapter")
    labels = {key: meta[key] for key in ("emotions", "layers", "d_model", "model", "method", "denoise",
                                          "data_hash", "extra")}
    content = _content_sha256(tensors_sha, labels)
    if fmt == FORMAT and content != meta["content_sha256"]:
        raise VectorFileError(f"the labels in {jpath} do not match their recorded hash (edited or corrupted); "
                              "re-run the extraction chapter")
    if fmt == 1 and warn:
        warnings.warn(f"{jpath} is format 1: its labels (emotions, layers) are not covered by a hash; re-run the "
                      "extraction chapter to rewrite it as format 2", UserWarning, stacklevel=3)
    try:
        tensors = st_load(blob)
        vec = EmotionVectors(meta["emotions"], meta["layers"], tensors["vectors"], tensors["center"], meta["model"],
                             meta["method"], meta["denoise"], meta["data_hash"], meta["versions"], meta["extra"])
    except (SafetensorError, KeyError, ValueError) as exc:
        raise VectorFileError(f"{tpath} does not hold the vectors {jpath.name} describes ({exc}); re-run the "
                              "extraction chapter") from exc
    if vec.d_model != meta["d_model"]:
        raise VectorFileError(f"{jpath} says d_model {meta['d_model']} but {tpath.name} has {vec.d_model}; "
                              "re-run the extraction chapter")
    return vec, content


if __name__ == "__main__":
    from emolib.export import main

    raise SystemExit(main())
