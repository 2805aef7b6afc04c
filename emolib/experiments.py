"""Chapter 4's experiment designs: the strength units, the typed null directions, the self-report design
and the tone conditions. The scoring lives in :mod:`emolib.selfreport` and :mod:`emolib.tone`.
"""

from __future__ import annotations

import pandas as pd
import torch

from emolib.capture import mean_resid_norms
from emolib.data import load_neutral
from emolib.vectors import EmotionVectors

__all__ = ["NEUTRAL_PROMPTS", "TONE_PROMPTS", "layer_norms", "steering_units", "null_unit_directions",
           "selfreport_experiment", "tone_design"]

NEUTRAL_PROMPTS = (
    "Write a short note to your neighbour about the bins.",
    "Describe what you will do this afternoon.",
    "Tell me about the weather today.",
)

# Neutral requests for the tone experiment: no emotion word, no emotional topic.
TONE_PROMPTS = NEUTRAL_PROMPTS + (
    "Explain how to boil an egg.", "Describe the room you are in.", "Write a few lines about a train journey.",
    "What do you usually have for breakfast?", "Describe a walk through a town centre.",
    "Tell me about a typical Tuesday.", "Write a short note about a change of meeting room.",
    "Describe how to plant a tree.", "Tell me what is in your bag.", "Write about the view from a window.",
    "Describe a visit to the library.", "Explain how you would tidy a desk.", "Tell me about the street where you live.",
    "Describe a cup of tea.", "Write a few sentences about the post arriving.", "Describe the colour of the sky this evening.",
    "Tell me how you get to work.", "Write about a bus stop.", "Describe a kitchen table.",
    "Tell me about a pair of shoes.", "Write a note to a colleague about a printer.",
)


def layer_norms(model, layer: int, *, n_texts: int = 64) -> dict[int, float]:
    """``{layer: mean residual norm}`` over neutral passages (BOS excluded)."""
    texts = [n.render() for n in load_neutral()[:n_texts]]
    return {layer: float(mean_resid_norms(model, texts)[layer])}


def steering_units(model, vectors: EmotionVectors, layer: int, *, n_texts: int = 64, chat: bool = False):
    """Both strength units at ``layer``: the mean residual norm over neutral texts of the kind the
    chapter steers (chat-formatted requests for a chat model, plain neutral passages otherwise) and the
    median emotion-vector norm."""
    from emolib.chat import format_chat
    from emolib.steering import StrengthUnits

    if chat:
        texts = [format_chat(model.tokenizer, [{"role": "user", "content": p}]) for p in TONE_PROMPTS]
        label = f"{len(texts)} neutral requests in the chat template"
    else:
        texts = [n.render() for n in load_neutral()[:n_texts]]
        label = f"{len(texts)} neutral passages"
    return StrengthUnits.measure(model, vectors, layer, texts=texts, label=label)


def null_unit_directions(vectors: EmotionVectors, layer: int, *, n_per_kind: int, seed: int = 0):
    """The null controls (typed, seeded) and their unit directions ``[2 * n_per_kind, d_model]``."""
    from emolib.nulls import null_directions

    nulls = null_directions(n_per_kind, seed=seed)
    return nulls, torch.stack([n.unit(vectors, layer) for n in nulls])


def selfreport_experiment(model, vectors: EmotionVectors, layer: int, units, *, alphas, n_null: int,
                          n_contexts: int, chat: bool, emotions: list[str] | None = None, seed: int = 0,
                          batch_size: int = 16):
    """Own-word log-probability after feeling contexts for every emotion and ``n_null`` controls of each
    kind, at every strength in ``alphas`` (fraction of the residual norm)."""
    from emolib.selfreport import feeling_contexts, run_selfreport

    emotions = list(vectors.emotions) if emotions is None else list(emotions)
    emo = torch.stack([vectors.vector(e, layer, unit=True).float() for e in emotions])
    nulls, null_dirs = null_unit_directions(vectors, layer, n_per_kind=n_null, seed=seed)
    contexts = feeling_contexts(model.tokenizer, chat=chat, n=n_contexts)
    return run_selfreport(model, contexts, emotions, directions=torch.cat([emo, null_dirs]), n_emotions=len(emotions),
                          null_kinds=[n.kind.value for n in nulls], alphas=alphas, layer=layer,
                          residual_norm=units.residual_norm, batch_size=batch_size)


def tone_design(vectors: EmotionVectors, layer: int, units, *, emotions: list[str], alphas, n_null: int,
                seed: int = 0) -> tuple[pd.DataFrame, torch.Tensor]:
    """Conditions (unsteered; each emotion x alpha; each null x alpha) and the vector each adds."""
    nulls, null_dirs = null_unit_directions(vectors, layer, n_per_kind=n_null, seed=seed)
    rows, added = [{"condition": "none", "kind": "none", "alpha": 0.0}], [torch.zeros(vectors.d_model)]
    for a in alphas:
        for e in emotions:
            rows.append({"condition": e, "kind": "emotion", "alpha": float(a)})
            added.append(a * units.residual_norm * vectors.vector(e, layer, unit=True).float())
        for n, d in zip(nulls, null_dirs):
            rows.append({"condition": n.label, "kind": "null", "alpha": float(a)})
            added.append(a * units.residual_norm * d)
    return pd.DataFrame(rows), torch.stack(added)
