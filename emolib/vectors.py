"""``EmotionVectors``: one direction per emotion per layer, saved as safetensors plus JSON."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from emolib._io import atomic_write_bytes, atomic_write_json

__all__ = ["EmotionVectors", "VectorFileError", "library_versions"]

FORMAT = 1


class VectorFileError(ValueError):
    """A vector file is missing, corrupted, or belongs to another model."""


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
    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` (tensors) and ``path.json`` (metadata with the tensor file's hash)."""
        base = Path(path).with_suffix("")
        blob = st_save({"vectors": self.vectors.float().contiguous(), "center": self.center.float().contiguous()})
        meta = {"format": FORMAT, "emotions": self.emotions, "layers": self.layers, "d_model": self.d_model,
                "model": self.model, "method": self.method, "denoise": self.denoise, "data_hash": self.data_hash,
                "versions": self.versions, "extra": self.extra,
                "tensors_sha256": hashlib.sha256(blob).hexdigest()}
        atomic_write_bytes(base.with_suffix(".safetensors"), blob)
        atomic_write_json(base.with_suffix(".json"), meta)
        return base

    @classmethod
    def load(cls, path: str | Path, *, model=None) -> "EmotionVectors":
        base = Path(path).with_suffix("")
        jpath, tpath = base.with_suffix(".json"), base.with_suffix(".safetensors")
        for p in (jpath, tpath):
            if not p.is_file():
                raise VectorFileError(f"{p} does not exist; run the extraction chapter (or save vectors) first")
        try:
            meta = json.loads(jpath.read_text())
        except ValueError as exc:
            raise VectorFileError(f"{jpath} is not valid JSON ({exc})") from exc
        blob = tpath.read_bytes()
        if meta.get("format") != FORMAT or hashlib.sha256(blob).hexdigest() != meta.get("tensors_sha256"):
            raise VectorFileError(f"{tpath} does not match {jpath.name} (corrupted or from another save); "
                                  "re-run the extraction")
        try:
            tensors = st_load(blob)
        except SafetensorError as exc:
            raise VectorFileError(f"{tpath} is unreadable ({exc})") from exc
        vec = cls(meta["emotions"], meta["layers"], tensors["vectors"], tensors["center"], meta["model"],
                  meta["method"], meta["denoise"], meta["data_hash"], meta["versions"], meta["extra"])
        if model is not None:
            vec.check_model(model)
        return vec


if __name__ == "__main__":
    from emolib.export import main

    raise SystemExit(main())
