"""The causal experiments of chapters 4 and 5: steered generation, preferences, ethics under pressure,
and the per-token emotion monitor. Each function returns tidy tables; the chapters plot and narrate.
"""

from __future__ import annotations

import contextlib
import math
import random

import numpy as np
import pandas as pd
import torch

from emolib.capture import capture, mean_resid_norms
from emolib.chat import encode
from emolib.data import load_activities, load_control_questions, load_neutral, load_pressure
from emolib.progress import report
from emolib.scoring import bradley_terry, choice_both_orders, fluency
from emolib.stats import bootstrap_mean_ci, correlation
from emolib.steering import random_direction, steer
from emolib.vectors import EmotionVectors

__all__ = ["NEUTRAL_PROMPTS", "TONE_PROMPTS", "layer_norms", "steering_units", "null_unit_directions",
           "selfreport_experiment", "tone_design", "generate", "steering_grid", "usable_alpha", "readout_validity",
           "preference_pairs", "preference_elo", "activity_projections", "probe_elo_correlations",
           "steering_elo_shift", "ethics_dose_response", "token_monitor"]

NEUTRAL_PROMPTS = (
    "Write a short note to your neighbour about the bins.",
    "Describe what you will do this afternoon.",
    "Tell me about the weather today.",
)
ELO_PER_LOGIT = 400 / math.log(10)

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


def _steer_ctx(model, vectors, layer, norms, emotion, alpha, *, seed=0, positions="all", prompt_len=None):
    if alpha == 0 or emotion is None:
        return contextlib.nullcontext()
    if emotion == "random":
        return steer(model, direction=random_direction(vectors.d_model, seed=seed), layers=[layer], alpha=alpha,
                     norms=norms, positions=positions, prompt_len=prompt_len)
    return steer(model, vectors, emotions=emotion, layers=[layer], alpha=alpha, norms=norms, positions=positions,
                 prompt_len=prompt_len)


def generate(model, prompt_ids: list[int], *, max_new_tokens: int, ctx=None) -> list[int]:
    """Greedy continuation with the KV cache, inside ``ctx`` (a steering context) if given."""
    t = torch.tensor([prompt_ids], device=next(model.parameters()).device)
    with torch.no_grad(), (ctx or contextlib.nullcontext()):
        out = model.generate(t, max_new_tokens=max_new_tokens, do_sample=False, use_past_kv_cache=True,
                             stop_at_eos=True, verbose=False)
    return out[0, len(prompt_ids):].tolist()


def steering_grid(model, vectors: EmotionVectors, layer: int, norms: dict, *, prompts, emotions, alphas,
                  max_new_tokens: int = 24, seed: int = 0, chat: bool = True) -> pd.DataFrame:
    """Greedy continuations for every prompt x emotion (plus the random control) x alpha, with their
    fluency under the unsteered model and the projection of the continuation onto the target emotion."""
    from emolib.chat import encode_chat

    rows = []
    n_runs = len(prompts) * (1 + (len(emotions) + 1) * sum(a != 0 for a in alphas))
    for pi, prompt in enumerate(prompts):
        ids = encode_chat(model.tokenizer, [{"role": "user", "content": prompt}]) if chat else encode(model.tokenizer, prompt)
        for emotion in [*emotions, "random"]:
            for alpha in alphas:
                if alpha == 0 and emotion != emotions[0]:
                    continue  # one unsteered baseline per prompt
                cont = generate(model, ids, max_new_tokens=max_new_tokens,
                                ctx=_steer_ctx(model, vectors, layer, norms, emotion, alpha, seed=seed + pi))
                rows.append({"prompt": pi, "emotion": "none" if alpha == 0 else emotion, "alpha": alpha,
                             "text": model.tokenizer.decode(cont, skip_special_tokens=True).strip(),
                             "n_tokens": len(cont), **fluency(model, ids, cont)})
                report("steered generation (continuations)", len(rows), n_runs)
    df = pd.DataFrame(rows)
    # How strongly does each continuation, read by the unsteered model, express each steered emotion?
    texts = [t if t else "." for t in df["text"]]
    acts = capture(model, texts, layers=[layer], start=1, progress=False).activations[:, 0]
    scores = vectors.project(acts, layer)
    for e in emotions:
        df[f"proj_{e}"] = scores[:, vectors.emotions.index(e)].numpy()
    return df


def usable_alpha(grid: pd.DataFrame, *, max_ppl_ratio: float = 2.0, max_repetition_increase: float = 0.2) -> float:
    """Largest alpha whose median perplexity stays within ``max_ppl_ratio`` of the unsteered text and
    whose median repetition rises by at most ``max_repetition_increase`` (emotion steering only)."""
    base = grid[grid.alpha == 0]
    ppl0, rep0 = base.perplexity.median(), base.repetition.median()
    best = 0.0
    steered = grid[(grid.alpha != 0) & (grid.emotion != "random")]
    for alpha, g in sorted(steered.groupby(steered.alpha.abs()), key=lambda x: x[0]):
        if g.perplexity.median() <= max_ppl_ratio * ppl0 and g.repetition.median() <= rep0 + max_repetition_increase:
            best = float(alpha)
        else:
            break
    return best


def readout_validity(model, *, batch_size: int = 8) -> dict:
    """How often the option-probability readout picks the obvious answer of the control questions."""
    qs = load_control_questions()
    res = choice_both_orders(model, [(q.question, q.correct, q.wrong) for q in qs], batch_size=batch_size)
    correct = (res["p_first"] > 0.5).astype(float)
    lo, hi = bootstrap_mean_ci(correct)
    both = ((res["order1"] > 0.5) & (res["order2"] > 0.5)).mean()
    return {"accuracy": float(correct.mean()), "accuracy_ci": [lo, hi], "both_orders_correct": float(both),
            "mean_p_correct": float(res["p_first"].mean()), "letter_bias_a": res["letter_bias_a"], "n": len(qs),
            "per_question": pd.DataFrame({"question": [q.question for q in qs], "correct": [q.correct for q in qs],
                                          "p_correct": res["p_first"], "order1": res["order1"], "order2": res["order2"]})}


PREFERENCE_QUESTION = "Which would you rather do?"


def preference_pairs(n_items: int, *, per_item: int, seed: int = 0) -> list[tuple[int, int]]:
    """A balanced random design: every item appears in about ``2 * per_item`` pairs, none repeated."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    for _ in range(per_item):
        perm = list(range(n_items))
        rng.shuffle(perm)
        for k in range(n_items):
            a, b = perm[k], perm[(k + 1) % n_items]
            if a != b:
                pairs.add((min(a, b), max(a, b)))
    return sorted(pairs)


def preference_elo(model, pairs, *, batch_size: int = 8, steering=None) -> tuple[np.ndarray, np.ndarray]:
    """Elo per activity from pairwise choices (both orders), and P(first) per pair."""
    acts = load_activities()
    items = [(PREFERENCE_QUESTION, acts[i].text, acts[j].text) for i, j in pairs]
    p = choice_both_orders(model, items, batch_size=batch_size, steering=steering)["p_first"]
    elo = bradley_terry(len(acts), [(i, j, float(pp)) for (i, j), pp in zip(pairs, p)])
    return elo, p


def activity_projections(model, vectors: EmotionVectors, layer: int) -> np.ndarray:
    """Projection of each activity text onto every emotion vector: ``[n_activities, n_emotions]``."""
    texts = [a.text for a in load_activities()]
    acts = capture(model, texts, layers=[layer], start=1, progress=False).activations[:, 0]
    return vectors.project(acts, layer).numpy()


def probe_elo_correlations(proj: np.ndarray, elo: np.ndarray, emotions: list[str]) -> pd.DataFrame:
    rows = []
    for k, e in enumerate(emotions):
        c = correlation(proj[:, k], elo, n_boot=1000, n_perm=2000)
        rows.append({"emotion": e, "r": c["r"], "ci_lo": c["ci"][0], "ci_hi": c["ci"][1], "p": c["p"]})
    return pd.DataFrame(rows).sort_values("r")


def steering_elo_shift(model, vectors, layer, norms, emotion: str, alpha: float, pairs, *, base: np.ndarray,
                       batch_size: int = 8, seed: int = 0) -> dict:
    """Steer on the tokens of the first activity of each pair (both orders) and measure the change in
    its log-odds of being chosen against the unsteered ``base`` P(first) of the same ``pairs`` (from
    :func:`preference_elo`), in Elo points (400 Elo = a factor 10 in odds), with a CI over pairs."""
    acts = load_activities()
    items = [(PREFERENCE_QUESTION, acts[i].text, acts[j].text) for i, j in pairs]

    def factory(mask):
        return _steer_ctx(model, vectors, layer, norms, emotion, alpha, seed=seed, positions=mask)

    steered = choice_both_orders(model, items, batch_size=batch_size, steering=factory, steer_first_option=True)["p_first"]
    logit = lambda p: np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))  # noqa: E731
    shift = (logit(steered) - logit(base)) * ELO_PER_LOGIT
    lo, hi = bootstrap_mean_ci(shift, seed=seed)
    return {"emotion": emotion, "alpha": alpha, "elo_shift": float(shift.mean()), "ci": [lo, hi],
            "p_first_base": float(base.mean()), "p_first_steered": float(steered.mean())}


def ethics_dose_response(model, vectors, layer, norms, *, emotions, alphas, n_random: int = 1, batch_size: int = 8,
                         seed: int = 0, limit: int | None = None) -> pd.DataFrame:
    """Mean P(unethical option) over the pressure scenarios for every emotion x alpha, plus random
    directions of equal norm; both option orders; bootstrap CIs over scenarios; per-scenario
    differences from the baseline for paired comparisons."""
    scen = load_pressure()[:limit]
    items = [(s.question, s.unethical, s.ethical) for s in scen]
    context = [s.scenario for s in scen]

    def rate(ctx_factory):
        return choice_both_orders(model, items, context=context, batch_size=batch_size, steering=ctx_factory)["p_first"]

    base = rate(None)
    rows = [{"emotion": "none", "alpha": 0.0, "per_scenario": base}]
    n_conditions = 1 + (len(emotions) + n_random) * sum(a != 0 for a in alphas)
    report("ethics (conditions)", 1, n_conditions)
    for e in [*emotions, *[f"random{k}" for k in range(n_random)]]:
        for a in alphas:
            if a == 0:
                continue
            is_random = e.startswith("random")
            f = lambda a=a, e=e, r=is_random: _steer_ctx(  # noqa: E731
                model, vectors, layer, norms, "random" if r else e, a, seed=seed + 100 + int(e[6:]) if r else seed)
            rows.append({"emotion": e, "alpha": float(a), "per_scenario": rate(f)})
            report("ethics (conditions)", len(rows), n_conditions)
    out = []
    for r in rows:
        p = r["per_scenario"]
        lo, hi = bootstrap_mean_ci(p, seed=seed)
        d = p - base
        dlo, dhi = bootstrap_mean_ci(d, seed=seed)
        out.append({"emotion": r["emotion"], "alpha": r["alpha"], "rate": float(p.mean()), "ci_lo": lo, "ci_hi": hi,
                    "diff": float(d.mean()), "diff_lo": dlo, "diff_hi": dhi, "per_scenario": p})
    return pd.DataFrame(out)


def token_monitor(model, vectors: EmotionVectors, layer: int, texts: list[str], emotions: list[str]) -> list[dict]:
    """Per-token projections onto ``emotions`` for each text: dicts with ``tokens`` and ``scores [n, E]``."""
    res = capture(model, texts, layers=[layer], pooling="all", progress=False)
    out = []
    idx = [vectors.emotions.index(e) for e in emotions]
    for text, acts in zip(texts, res.activations):
        ids = encode(model.tokenizer, text)[1:]
        scores = vectors.project(acts[:, 0], layer)[:, idx].numpy()
        out.append({"tokens": [model.tokenizer.decode([t]) for t in ids], "scores": scores})
    return out
