"""Typed random-direction controls: the null distribution a steering effect is compared with.

Two kinds, each a seeded unit direction at one layer (the experiment gives it the same strength,
hence the same norm, as the emotion vector it is compared with):

- :attr:`NullKind.ISOTROPIC`: uniform on the sphere of ``d_model`` dimensions;
- :attr:`NullKind.EMOTION_MIXTURE`: a random Gaussian mixture of all the unit emotion vectors at
  the layer (in-distribution: it lies in the subspace emotion vectors span and shares their common
  components, but is no particular emotion).

An effect is reported as the emotion's effect minus the null mean, with the emotion's percentile
in the null (:func:`null_percentile`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import numpy as np
import torch

from emolib.vectors import EmotionVectors

__all__ = ["NullKind", "RandomDirection", "null_directions", "null_percentile", "null_summary"]


class NullKind(enum.Enum):
    ISOTROPIC = "isotropic"
    EMOTION_MIXTURE = "emotion_mixture"


@dataclass(frozen=True)
class RandomDirection:
    """One control direction: its kind and seed fully determine it."""

    kind: NullKind
    seed: int

    @property
    def label(self) -> str:
        return f"{self.kind.value}#{self.seed}"

    def unit(self, vectors: EmotionVectors, layer: int) -> torch.Tensor:
        """The unit direction ``[d_model]``."""
        g = torch.Generator().manual_seed(self.seed)
        if self.kind is NullKind.ISOTROPIC:
            v = torch.randn(vectors.d_model, generator=g)
        else:
            units = vectors.at(layer).float()
            units = units / units.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [n_emotions, d_model]
            v = torch.randn(units.shape[0], generator=g) @ units
        return v / v.norm()


def null_directions(n_per_kind: int, *, seed: int = 0,
                    kinds: tuple[NullKind, ...] = (NullKind.ISOTROPIC, NullKind.EMOTION_MIXTURE)) -> list[RandomDirection]:
    """``n_per_kind`` controls of each kind, with distinct seeds derived from ``seed``."""
    return [RandomDirection(kind, 1000 * (seed + 1) + 100_000 * k + i) for k, kind in enumerate(kinds)
            for i in range(n_per_kind)]


def null_percentile(value: float, null: np.ndarray) -> float:
    """Percentile (0-100) of ``value`` in ``null``: the share of null values below it (ties count half)."""
    null = np.asarray(null, dtype=float)
    return float(100 * ((null < value).sum() + 0.5 * (null == value).sum()) / len(null))


def null_summary(null: np.ndarray) -> dict:
    """Mean and central 95% band of a null distribution."""
    null = np.asarray(null, dtype=float)
    return {"null_mean": float(null.mean()), "null_lo": float(np.quantile(null, 0.025)),
            "null_hi": float(np.quantile(null, 0.975)), "null_n": int(len(null))}
