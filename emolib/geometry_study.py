"""Chapter 3's study: where (which layer) and how strongly the emotion vectors encode valence and arousal.

Stages, each a function the chapter calls: :func:`rated_targets` (which emotions have ratings),
:func:`layer_study` (PC-r and nested-CV decoding at every layer, raw and denoised, with a shared
permutation null), :func:`choose_headline_layer` (the pre-stated half-split rule),
:func:`headline_decoding` (the reported numbers, on the emotions the rule did not look at),
:func:`shuffled_label_spaces` and :func:`baseline_comparison` (baselines through the same decoding,
paired over emotions), :func:`variance_sweep` and :func:`pooling_sweep` (validation-split checks of
the extraction parameters), :func:`pc_covariate_r` / :func:`regress_out` (what the top PCs track) and
:func:`family_contrast` (within- vs between-family similarity against a label-permutation null).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emolib.decoding import DecodingByLayer, decode_layers, decode_space, gram, paired_difference
from emolib.extraction import neutral_components
from emolib.geometry import cosine_matrix, pca
from emolib.stats import _corr_rows

__all__ = ["SCALES", "LAYER_RULE", "HeadlineLayer", "rated_targets", "layer_study", "by_layer_table",
           "choose_headline_layer", "headline_decoding", "shuffled_label_spaces", "baseline_comparison",
           "variance_sweep", "pooling_sweep", "pc_covariate_r", "regress_out", "pc_rating_r", "family_contrast",
           "significant_layers", "verdict"]

SCALES = ["valence", "arousal"]
LAYER_RULE = ("half-split: the emotions with ratings are split at random (seeded) into two halves; the layer "
              "with the highest cross-validated valence decoding r (denoised vectors) on the selection half is "
              "the headline layer, and its decoding r, CI and permutation p are reported on the other half only; "
              "the search over layers is also corrected by a max-over-layers permutation test on all emotions")


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=float)


def rated_targets(names: list[str], ratings: pd.DataFrame) -> tuple[list[int], np.ndarray]:
    """Row indices (into ``names``) of the rated emotions and their ``[n, 2]`` valence/arousal."""
    idx = [i for i, e in enumerate(names) if e in ratings.index]
    y = ratings.loc[[names[i] for i in idx], SCALES].to_numpy(dtype=float)
    return idx, y


def layer_study(vectors_by_layer, idx: list[int], y: np.ndarray, *, layers: list[int], n_perm: int = 1000,
                seed: int = 0) -> DecodingByLayer:
    """Decoding and PC-r at every layer of ``vectors_by_layer [L, E, d]`` for the rated rows ``idx``."""
    grams = np.stack([gram(v) for v in vectors_by_layer])
    return decode_layers(grams, y, layers=layers, scales=SCALES, rows=idx, n_perm=n_perm, seed=seed)


def by_layer_table(studies: dict[bool, DecodingByLayer], *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per (layer, denoised): the keys of ``metrics.json``'s ``geometry_by_layer``."""
    rows = []
    for denoised, st in studies.items():
        q_v, q_a = st.null_quantile("valence"), st.null_quantile("arousal")
        pc_q = np.quantile(st.pc_null, 0.95, axis=-1) if st.n_perm else np.full(st.pc_r.shape, np.nan)
        for li, layer in enumerate(st.layers):
            best = int(np.argmax(st.pc_r[li, :, 1]))
            rows.append({"layer": layer, "denoised": denoised,
                         "pc1_valence_r": float(st.pc_r[li, 0, 0]), "pc1_valence_null95": float(pc_q[li, 0, 0]),
                         "best_valence_pc": int(np.argmax(st.pc_r[li, :, 0])) + 1,
                         "best_valence_pc_r": float(st.pc_r[li, :, 0].max()),
                         "valence_cv_r": float(st.r[li, 0]), "valence_cv_ci": list(st.ci(layer, "valence", n_boot=n_boot, seed=seed)),
                         "valence_cv_p": st.p(layer, "valence"), "valence_cv_null95": float(q_v[li]),
                         "arousal_best_pc": best + 1, "arousal_best_pc_r": float(st.pc_r[li, best, 1]),
                         "arousal_cv_r": float(st.r[li, 1]), "arousal_cv_ci": list(st.ci(layer, "arousal", n_boot=n_boot, seed=seed)),
                         "arousal_cv_p": st.p(layer, "arousal"), "arousal_cv_null95": float(q_a[li])})
    return pd.DataFrame(rows)


@dataclass
class HeadlineLayer:
    layer: int
    rule: str
    selection: list[int]   # positions (into the rated emotions) the rule looked at
    report: list[int]      # positions the headline numbers are computed on
    selection_r: list[float]  # valence decoding r per layer on the selection half


def choose_headline_layer(vectors_by_layer, idx: list[int], y: np.ndarray, *, layers: list[int],
                          seed: int = 0) -> HeadlineLayer:
    """Apply :data:`LAYER_RULE`: choose on a seeded random half, leave the other half for reporting."""
    rng = np.random.default_rng(seed + 7)
    order = rng.permutation(len(idx))
    half = len(idx) // 2
    sel, rep = sorted(order[:half].tolist()), sorted(order[half:].tolist())
    st = layer_study(vectors_by_layer, [idx[i] for i in sel], y[sel], layers=layers, n_perm=0, seed=seed)
    best = int(np.argmax(st.r[:, 0]))
    return HeadlineLayer(layers[best], LAYER_RULE, sel, rep, [float(x) for x in st.r[:, 0]])


def headline_decoding(vectors, idx: list[int], y: np.ndarray, head: HeadlineLayer, *, n_perm: int = 1000,
                      seed: int = 0) -> dict:
    """Decoding r, CI and permutation p at the headline layer on the report half only."""
    rows = [idx[i] for i in head.report]
    st = decode_space(_np(vectors)[rows], y[head.report], scales=SCALES, n_perm=n_perm, seed=seed)
    out = {"n_report": len(rows)}
    for s in SCALES:
        out[f"{s}_cv_r"] = float(st.r[0, SCALES.index(s)])
        out[f"{s}_cv_ci"] = list(st.ci(0, s, seed=seed))
        out[f"{s}_cv_p"] = st.p(0, s)
    return out


def shuffled_label_spaces(ca, layer: int, *, n: int, variance: float, splits: tuple[str, ...] = ("fit", "val"),
                          seed: int = 0) -> torch.Tensor:
    """``[n, E, d]`` mean-difference vectors at ``layer`` with the story-to-emotion labels shuffled,
    denoised exactly as the real vectors (neutral components computed once)."""
    li = list(ca.layers).index(layer)
    acts, labels = ca.subset(splits)
    x = acts[:, li].double()                                      # [n_stories, d]
    pos = {e: i for i, e in enumerate(ca.emotions)}
    lab = np.array([pos[e] for e in labels])
    comps = neutral_components(ca.neutral_acts[:, [li]], variance=variance)[0].double() if variance > 0 else None
    E = len(ca.emotions)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        perm = torch.from_numpy(rng.permutation(lab))
        sums = torch.zeros(E, x.shape[1], dtype=torch.float64).index_add_(0, perm, x)
        means = sums / torch.bincount(perm, minlength=E).double()[:, None]
        v = means - means.mean(0)
        if comps is not None and len(comps):
            v = v - (v @ comps.T) @ comps
        out.append(v)
    return torch.stack(out).float()


def pc_rating_r(vectors, y: np.ndarray, *, rows: list[int] | None = None, n_pcs: int = 3) -> np.ndarray:
    """|r| of PC1..n with each column of ``y`` (``[n_pcs, S]``); the PCA is over all rows of
    ``vectors``, and ``rows`` (default all) are the ones ``y`` rates, in its order."""
    scores, _, _ = pca(vectors, n_components=n_pcs)
    scores = scores if rows is None else scores[rows]
    return np.abs(np.array([[np.corrcoef(scores[:, j], y[:, s])[0, 1] for s in range(y.shape[1])]
                            for j in range(scores.shape[1])]))


def baseline_comparison(model_space, baselines: dict[str, object], shuffled: torch.Tensor, idx: list[int],
                        y: np.ndarray, *, n_perm: int = 1000, n_boot: int = 2000, seed: int = 0
                        ) -> tuple[pd.DataFrame, dict]:
    """Every space through the same nested-CV decoding on identical folds (same seed), and paired
    bootstrap differences of the model's decoding r minus each baseline's; the shuffled-label spaces
    form a distribution the model's r is ranked in."""
    model = decode_space(model_space, y, scales=SCALES, rows=idx, n_perm=n_perm, seed=seed)
    table, metrics = [], {}
    for name, space in {"model": model_space, **baselines}.items():
        st = model if name == "model" else decode_space(space, y, scales=SCALES, rows=idx, n_perm=n_perm, seed=seed)
        pc = pc_rating_r(space, y, rows=idx)
        m = {"pc1_valence_r": float(pc[0, 0]), "arousal_best_pc": int(np.argmax(pc[:, 1])) + 1,
             "arousal_best_pc_r": float(pc[:, 1].max())}
        for si, s in enumerate(SCALES):
            m[f"{s}_cv_r"] = float(st.r[0, si])
            m[f"{s}_cv_ci"] = list(st.ci(0, s, n_boot=n_boot, seed=seed))
            m[f"{s}_cv_p"] = st.p(0, s)
            if name != "model":
                m[f"model_minus_{s}_cv_r"] = paired_difference(model.pred[0, :, si], st.pred[0, :, si], y[:, si],
                                                                n_boot=n_boot, seed=seed)
        metrics[name] = m
        table.append({"space": name, **{k: v for k, v in m.items() if not isinstance(v, dict)},
                      **{f"{k}_diff": v["diff"] for k, v in m.items() if isinstance(v, dict)},
                      **{f"{k}_diff_ci": v["ci"] for k, v in m.items() if isinstance(v, dict)}})
    sh_r = np.array([decode_space(v, y, scales=SCALES, rows=idx, n_perm=0, seed=seed).r[0] for v in shuffled])
    sh_pc = np.array([pc_rating_r(v, y, rows=idx)[0, 0] for v in shuffled])   # [n_shuffles]
    sm = {"n": int(len(shuffled)), "pc1_valence_r": float(sh_pc.mean()),
          "pc1_valence_r_range": [float(sh_pc.min()), float(sh_pc.max())]}
    for si, s in enumerate(SCALES):
        own = metrics["model"][f"{s}_cv_r"]
        sm[f"{s}_cv_r"] = float(sh_r[:, si].mean())
        sm[f"{s}_cv_r_95"] = float(np.quantile(sh_r[:, si], 0.95))
        sm[f"{s}_cv_p"] = float((1 + np.sum(sh_r[:, si] >= own)) / (len(sh_r) + 1))  # model vs the shuffle distribution
    metrics["shuffled_labels"] = sm
    table.append({"space": f"shuffled labels (mean of {len(shuffled)})", **{k: v for k, v in sm.items()
                                                                            if not isinstance(v, list)}})
    return pd.DataFrame(table).set_index("space"), metrics


def variance_sweep(ca, layer: int, idx: list[int], y: np.ndarray, *, variances=(0.0, 0.25, 0.5, 0.75, 0.9),
                   seed: int = 0) -> pd.DataFrame:
    """At ``layer``, by neutral variance removed: validation top-1 (vectors from ``fit``, stories from
    ``val``) and cross-validated valence/arousal decoding r of the ``fit`` vectors."""
    from emolib.pipeline import denoise_sweep, fit_vectors

    cls = denoise_sweep(ca, layer, variances=variances, seed=seed).set_index("variance")
    one = _one_layer(ca, layer)
    rows = []
    for v in variances:
        vecs = fit_vectors(one, splits=("fit",), variance=v, seed=seed).at(layer)
        st = decode_space(vecs, y, scales=SCALES, rows=idx, n_perm=0, seed=seed)
        rows.append({"variance": v, "n_components": int(cls.loc[v, "n_components"]), "val_top1": float(cls.loc[v, "top1"]),
                     "valence_cv_r": float(st.r[0, 0]), "arousal_cv_r": float(st.r[0, 1])})
    return pd.DataFrame(rows)


def _one_layer(ca, layer: int):
    """The corpus activations restricted to one layer (denoising then costs one SVD, not one per layer)."""
    from emolib.pipeline import CorpusActivations

    li = list(ca.layers).index(layer)
    return CorpusActivations(ca.emotions, ca.stories, ca.story_acts[:, [li]], ca.neutral_acts[:, [li]], (layer,),
                             ca.story_capture, ca.neutral_capture, ca.data_hash)


def pooling_sweep(model, ca, layer: int, idx: list[int], y: np.ndarray, *, quick: bool, variance: float,
                  current_start: int, starts=(1, 10, 50), batch_size: int = 16, seed: int = 0) -> pd.DataFrame:
    """At ``layer``: mean pooling from each of ``starts`` and last-token pooling, each scored by
    validation top-1 and valence/arousal decoding of the ``fit`` vectors. ``ca`` was captured with mean
    pooling from ``current_start`` and is reused for that setting; the others are one-layer captures
    (cached on disk like every capture)."""
    from emolib.capture import capture
    from emolib.data import load_neutral
    from emolib.pipeline import QUICK_NEUTRAL, CorpusActivations, fit_vectors
    from emolib.validation import classification_by_layer

    neutral = load_neutral()
    if quick:  # the same neutral sample as pipeline.capture_corpus
        neutral = random.Random(seed).sample(neutral, QUICK_NEUTRAL)
    neutral_texts = [n.render() for n in neutral]
    keep = ca.indices(("fit", "val"))   # the held-out stories play no part in a validation check
    stories = [ca.stories[i] for i in keep]
    story_texts = [s.text for s in stories]
    rows = []
    for pooling, start in [("mean", s) for s in starts] + [("last", 1)]:
        if pooling == "mean" and start == current_start:
            sub = _one_layer(ca, layer)
        else:
            kw = dict(layers=[layer], pooling=pooling, start=start, batch_size=batch_size, progress=False)
            sres, nres = capture(model, story_texts, **kw), capture(model, neutral_texts, **kw)
            sub = CorpusActivations(ca.emotions, stories, sres.activations, nres.activations, (layer,), sres,
                                    nres, ca.data_hash)
        vecs = fit_vectors(sub, splits=("fit",), variance=variance, seed=seed)
        acts, labels = sub.subset(("val",))
        top1 = float(classification_by_layer(vecs, acts, labels, seed=seed).iloc[0]["top1"])
        st = decode_space(vecs.at(layer), y, scales=SCALES, rows=idx, n_perm=0, seed=seed)
        rows.append({"pooling": pooling, "start": start if pooling == "mean" else None, "val_top1": top1,
                     "valence_cv_r": float(st.r[0, 0]), "arousal_cv_r": float(st.r[0, 1])})
    return pd.DataFrame(rows)


def pc_covariate_r(vectors, covariates: pd.DataFrame, *, n_pcs: int = 3) -> pd.DataFrame:
    """Pearson r of PC1..n scores (deterministic sign, see :func:`emolib.geometry.pca`) with each
    covariate column; ``covariates`` rows align with the vectors' rows. ``[n_pcs, n_cov]``. A covariate
    that is the same for every row has no correlation: its column is NaN, not 0."""
    scores, _, _ = pca(vectors, n_components=n_pcs)
    c = covariates.to_numpy(dtype=float)
    r = _corr_rows(np.repeat(scores.T, c.shape[1], 0), np.tile(c.T, (scores.shape[1], 1)))
    r = np.where(np.tile(c.std(0) > 0, scores.shape[1]), r, np.nan)
    return pd.DataFrame(r.reshape(scores.shape[1], c.shape[1]), index=[f"PC{j + 1}" for j in range(scores.shape[1])],
                        columns=list(covariates.columns))


def regress_out(vectors, covariates: pd.DataFrame) -> np.ndarray:
    """Residuals ``[E, d]`` of the vectors after a least-squares fit on the covariates (plus intercept)."""
    v = _np(vectors)
    c = covariates.to_numpy(dtype=float)
    design = np.column_stack([np.ones(len(c)), (c - c.mean(0)) / np.where(c.std(0) > 0, c.std(0), 1)])
    beta, *_ = np.linalg.lstsq(design, v, rcond=None)
    return v - design @ beta


def family_contrast(vectors, families: list[str], *, n_perm: int = 1000, seed: int = 0) -> dict:
    """Mean cosine within families minus between families, with a family-label permutation p (one-sided)."""
    sim = cosine_matrix(vectors)
    fam = np.asarray(families)
    iu = np.triu_indices(len(fam), k=1)
    s = sim[iu]

    def stat(f):
        same = f[iu[0]] == f[iu[1]]
        return s[same].mean() - s[~same].mean(), s[same].mean(), s[~same].mean()

    d, w, b = stat(fam)
    rng = np.random.default_rng(seed)
    null = np.array([stat(rng.permutation(fam))[0] for _ in range(n_perm)])
    return {"within": float(w), "between": float(b), "diff": float(d),
            "p": float((1 + np.sum(null >= d)) / (n_perm + 1)), "n_emotions": int(len(fam))}


def significant_layers(st: DecodingByLayer, scale: str, *, alpha: float = 0.05) -> list[int]:
    """Layers whose decoding r survives the max-over-layers correction at ``alpha``."""
    return [layer for layer in st.layers if st.corrected_p(layer, scale) <= alpha]


def verdict(st: DecodingByLayer, hd: dict, layer: int, base: dict, summary: dict, pc_style: pd.DataFrame,
            *, alpha: float = 0.05) -> str:
    """The chapter's closing note in plain words, every number taken from the results passed in."""
    lines = []
    for s in SCALES:
        sig = significant_layers(st, s, alpha=alpha)
        where = (f"layers {sig[0]}-{sig[-1]}" if len(sig) > 1 and sig == list(range(sig[0], sig[-1] + 1))
                 else ", ".join(map(str, sig)) if sig else "no layer")
        ok = hd[f"{s}_cv_p"] <= alpha
        lines.append(
            f"{s.capitalize()}: decodable above the search-corrected null at {where}. At the pre-stated layer {layer}, "
            f"on the {hd['n_report']} emotions not used to choose it, decoding r = {hd[f'{s}_cv_r']:.2f} "
            f"[{hd[f'{s}_cv_ci'][0]:.2f}, {hd[f'{s}_cv_ci'][1]:.2f}], p = {hd[f'{s}_cv_p']:.4f}"
            f" ({'encoded' if ok else 'not shown to be encoded'} at this layer).")
    for name, label in (("sentence_embeddings", "MiniLM reading the same stories"),
                        ("input_embeddings", "the input embeddings of the words")):
        if name in base:
            d = base[name]["model_minus_valence_cv_r"]
            verdict_word = ("better than" if d["ci"][0] > 0 else "worse than" if d["ci"][1] < 0
                            else "not distinguishable from")
            lines.append(f"Valence decoding is {verdict_word} {label}: difference {d['diff']:+.2f} "
                         f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}] (paired bootstrap over emotions).")
    style_cols = [c for c in pc_style.columns if not c.endswith("|r|")]
    top = pc_style.loc["PC1", style_cols].abs().idxmax()
    lines.append(f"PC1 explains {summary['pc_variance'][0]:.0%} of the variance and correlates with valence at "
                 f"|r| = {summary['pc1_valence_r']:.2f}; its strongest style covariate is '{top}' "
                 f"(r = {pc_style.loc['PC1', top]:+.2f}).")
    return "\n".join(lines)
