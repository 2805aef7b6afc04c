"""Steering: add a direction to the residual stream inside a ``with`` block.

The staged API builds a :class:`SteeringVector` once (a unit direction, the layer, a strength and
the layer's :class:`StrengthUnits`) and applies it in a scope that always removes its hooks::

    units = StrengthUnits.measure(model, vectors, layer, texts=neutral_texts)
    vec = SteeringVector.from_emotions(vectors, "calm", layer=layer, alpha=0.1, units=units)
    with vec.apply(model, positions=Span.ALL):
        ...

Strength has two units, both carried by every vector: ``alpha``, the fraction of the layer's mean
residual norm (the reference study's unit), and :meth:`StrengthUnits.vector_multiple`, the same
push in multiples of the median emotion-vector norm at that layer (how large the push is against
the signal it is made of). At Gemma's layer 9 the residual norm is mostly the stream's constant
mean, so a small ``alpha`` is already many emotion-vector norms.

Positions (BOS, position 0 of a pass that starts at the sequence's beginning, is never steered):

- :attr:`Span.ALL`: every position except BOS, in every pass (KV-cached generation steps included);
- :attr:`Span.PROMPT`: positions 1..``prompt_len``-1 of a full pass; cached steps are left alone;
- :attr:`Span.GENERATED`: positions from ``prompt_len`` on, and every cached step;
- a bool mask ``[seq]`` or ``[batch, seq]``: exactly those positions of a full pass (column 0 is
  cleared); cached steps are left alone.

A vector may also hold one row per batch item (``[batch, d_model]``): conditions on the batch
axis, as :mod:`emolib.generation` and :mod:`emolib.selfreport` use. ``steer`` is the original
one-call interface, now a thin wrapper over :class:`SteeringVector`.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch

from emolib.hooks import residual_edit
from emolib.vectors import EmotionVectors

__all__ = ["POSITIONS", "Span", "StrengthUnits", "SteeringVector", "steering_vector", "steer", "random_direction",
           "position_edit"]

POSITIONS = ("all", "prompt", "generated")


class Span(enum.Enum):
    """Which positions a steering vector touches (BOS never)."""

    ALL = "all"
    PROMPT = "prompt"
    GENERATED = "generated"


@dataclass(frozen=True)
class StrengthUnits:
    """The two norms that give a steering strength its meaning at one layer.

    ``residual_norm``: mean residual norm (BOS excluded) over ``norm_texts`` texts of the kind the
    experiment steers; ``vector_norm``: median norm of the emotion vectors at the layer.
    """

    layer: int
    residual_norm: float
    vector_norm: float
    norm_texts: str = ""

    def vector_multiple(self, alpha: float) -> float:
        """``alpha`` (fraction of the residual norm) in multiples of the median emotion-vector norm."""
        return alpha * self.residual_norm / self.vector_norm

    def alpha_for_multiple(self, multiple: float) -> float:
        return multiple * self.vector_norm / self.residual_norm

    def as_dict(self) -> dict:
        return {"layer": self.layer, "residual_norm": self.residual_norm, "vector_norm": self.vector_norm,
                "residual_norm_texts": self.norm_texts, "alpha_1_in_vector_norms": self.vector_multiple(1.0)}

    @classmethod
    def measure(cls, model, vectors: EmotionVectors, layer: int, *, texts: Sequence[str], label: str) -> StrengthUnits:
        from emolib.capture import mean_resid_norms

        resid = float(mean_resid_norms(model, list(texts))[layer])
        vnorm = float(vectors.at(layer).float().norm(dim=-1).median())
        return cls(layer=layer, residual_norm=resid, vector_norm=vnorm, norm_texts=label)


def _unit(v: torch.Tensor) -> torch.Tensor:
    v = v.float()
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


@dataclass(frozen=True, eq=False)
class SteeringVector:
    """A built push: ``alpha * residual_norm * direction`` added at ``layer``.

    ``direction`` is a unit vector ``[d_model]`` or one unit row per batch item ``[batch, d_model]``.
    """

    layer: int
    direction: torch.Tensor
    alpha: float
    units: StrengthUnits
    label: str = ""

    def __post_init__(self):
        if self.units.layer != self.layer:
            raise ValueError(f"units measured at layer {self.units.layer}, vector at layer {self.layer}")

    @property
    def added(self) -> torch.Tensor:
        """What is added to the residual stream: ``[d_model]`` or ``[batch, d_model]``."""
        return self.alpha * self.units.residual_norm * self.direction

    @property
    def vector_multiple(self) -> float:
        return self.units.vector_multiple(self.alpha)

    @classmethod
    def from_direction(cls, direction: torch.Tensor, *, layer: int, alpha: float, units: StrengthUnits,
                       label: str = "") -> SteeringVector:
        return cls(layer=layer, direction=_unit(direction), alpha=float(alpha), units=units, label=label)

    @classmethod
    def from_emotions(cls, vectors: EmotionVectors, emotions: Mapping[str, float] | Sequence[str] | str, *,
                      layer: int, alpha: float, units: StrengthUnits) -> SteeringVector:
        """The (weighted) sum of unit emotion vectors, renormalised to unit length."""
        weights = _weights(emotions)
        total = sum(float(w) * vectors.vector(e, layer, unit=True) for e, w in weights.items())
        return cls.from_direction(total, layer=layer, alpha=alpha, units=units, label="+".join(weights))

    def apply(self, model, *, positions: Span | torch.Tensor = Span.ALL,
              prompt_len: int | None = None) -> contextlib.AbstractContextManager:
        """A scope in which every forward pass of ``model`` is steered at ``positions``."""
        return residual_edit(model, {self.layer: position_edit(self.added, positions, prompt_len)})


def _weights(emotions) -> dict[str, float]:
    if isinstance(emotions, str):
        emotions = {emotions: 1.0}
    elif not isinstance(emotions, Mapping):
        emotions = {e: 1.0 for e in emotions}
    if not emotions:
        raise ValueError("no emotions to steer with")
    return dict(emotions)


def steering_vector(vectors: EmotionVectors, emotions: Mapping[str, float] | Sequence[str] | str, layer: int,
                    *, alpha: float, norm: float) -> torch.Tensor:
    """``sum_e alpha * w_e * norm * unit(v_e)``: the ``[d_model]`` vector ``steer`` adds at ``layer``."""
    total = torch.zeros(vectors.d_model)
    for e, w in _weights(emotions).items():
        total += float(w) * vectors.vector(e, layer, unit=True)
    return alpha * norm * total


def random_direction(d_model: int, *, seed: int) -> torch.Tensor:
    """A seeded isotropic random unit vector (see :mod:`emolib.nulls` for the typed controls)."""
    v = torch.randn(d_model, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def position_edit(vec: torch.Tensor, positions: Span | str | torch.Tensor, prompt_len: int | None):
    """The hook function adding ``vec`` (``[d_model]`` or ``[batch, d_model]``) at ``positions``.

    A pass of more than one token is a full pass from position 0 (BOS there, never steered); later
    one-token passes of the same scope are KV-cached generation steps.
    """
    if isinstance(positions, str):
        positions = Span(positions)
    calls = {"n": 0}

    def edit(resid: torch.Tensor) -> torch.Tensor:  # [batch, seq, d_model]
        seq = resid.shape[1]
        first = calls["n"] == 0
        calls["n"] += 1
        v = vec.to(device=resid.device, dtype=resid.dtype)
        v = v[None, None, :] if v.ndim == 1 else v[:, None, :]  # [1 or batch, 1, d_model]
        cached_step = seq == 1 and not first
        if isinstance(positions, torch.Tensor):
            if cached_step:
                return resid  # a cached generation step: beyond the masked prompt
            mask = positions.to(resid.device).bool()
            if mask.shape[-1] != seq:
                raise ValueError(f"position mask has length {mask.shape[-1]}, the sequence has {seq}")
            m = (mask if mask.ndim == 2 else mask[None, :]).clone()
            m[:, 0] = False  # BOS
            return resid + m[..., None].to(resid.dtype) * v
        if cached_step:
            return resid if positions is Span.PROMPT else resid + v
        pos = torch.arange(seq, device=resid.device)
        if positions is Span.ALL:
            mask = pos >= 1
        elif positions is Span.PROMPT:
            mask = (pos >= 1) & (pos < prompt_len)
        else:
            mask = pos >= max(prompt_len, 1)
        return resid + mask[None, :, None].to(resid.dtype) * v

    return edit


@contextlib.contextmanager
def steer(model, vectors: EmotionVectors | None = None, *, layers: Sequence[int] | int,
          alpha: float, norms: Mapping[int, float] | torch.Tensor,
          emotions: Mapping[str, float] | Sequence[str] | str | None = None,
          direction: torch.Tensor | None = None, positions: str | torch.Tensor = "all",
          prompt_len: int | None = None) -> Iterator[dict[int, torch.Tensor]]:
    """Steer ``model`` towards ``emotions`` (or along a raw ``direction``) inside the block.

    Adds ``alpha * norms[layer] * sum_e w_e unit(v_e)`` (or ``alpha * norms[layer] * unit(direction)``)
    at each layer, never at BOS. Yields the vector added at each layer.
    """
    layers = [layers] if isinstance(layers, int) else list(layers)
    if (emotions is None) == (direction is None):
        raise ValueError("give exactly one of emotions= or direction=")
    if isinstance(positions, str) and positions not in POSITIONS:
        raise ValueError(f"unknown positions {positions!r}; use one of {POSITIONS} or a bool mask")
    if isinstance(positions, str) and positions != "all" and prompt_len is None:
        raise ValueError(f"positions={positions!r} needs prompt_len")
    if emotions is not None:
        if vectors is None:
            raise ValueError("emotions= needs the EmotionVectors")
        vectors.check_model(model)
    span = Span(positions) if isinstance(positions, str) else positions
    added, stack = {}, contextlib.ExitStack()
    with stack:
        for layer in layers:
            norm = float(norms[layer])
            # The legacy sum of unit vectors is not renormalised; direction = total / |total|, alpha scaled to match.
            total = (direction.float() / direction.float().norm() if direction is not None
                     else steering_vector(vectors, emotions, layer, alpha=1.0, norm=1.0))
            units = StrengthUnits(layer=layer, residual_norm=norm, vector_norm=1.0)
            vec = SteeringVector(layer=layer, direction=_unit(total), alpha=alpha * float(total.norm()), units=units)
            added[layer] = vec.added
            stack.enter_context(vec.apply(model, positions=span, prompt_len=prompt_len))
        yield added
