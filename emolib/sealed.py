"""Sealed tensor files: a safetensors file whose metadata carries a sha256 of its tensor and metadata.

safetensors checks its header but never the tensor bytes, so a cache file garbled on disk would load
without complaint. :func:`seal` records the digest; :func:`open_sealed` recomputes it and raises
:class:`Damaged` (saying how) on any mismatch, wrong shape or dtype, so the caller can recompute.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

__all__ = ["Damaged", "seal", "open_sealed"]


class Damaged(Exception):
    """A sealed file failed its checks; the message says how (the caller decides the remedy)."""


def _digest(t: torch.Tensor, meta: dict[str, str]) -> str:
    """sha256 over the tensor's dtype, shape and bytes and the file's other metadata."""
    h = hashlib.sha256(json.dumps({"dtype": str(t.dtype), "shape": list(t.shape), "meta": meta},
                                  sort_keys=True).encode())
    h.update(t.contiguous().numpy().data)
    return h.hexdigest()


def seal(name: str, t: torch.Tensor, meta: dict[str, str]) -> bytes:
    """The bytes of a file holding ``t`` under ``name`` with ``meta`` and their digest."""
    t = t.contiguous()
    return save({name: t}, metadata={**meta, "sha256": _digest(t, meta)})


def open_sealed(path: str | Path, name: str, shape: tuple[int, ...], *,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, dict[str, str]]:
    """The tensor ``name`` of a sealed file and its metadata, after checking shape, dtype and digest."""
    try:
        t = load_file(str(path))[name]
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
    except (SafetensorError, KeyError, OSError, ValueError) as exc:
        raise Damaged(f"are unreadable ({exc})") from exc
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype:
        raise Damaged(f"have shape {tuple(t.shape)} {t.dtype}, expected {tuple(shape)} {dtype}")
    recorded = meta.pop("sha256", None)
    if recorded != _digest(t, meta):
        raise Damaged("do not match their recorded sha256 (corrupted on disk)")
    return t, meta
