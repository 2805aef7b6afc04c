"""Figures of chapter 4 (causal steering): self-report and tone against their random nulls."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from emolib.plots import plt
from emolib.selfreport import SelfReport

__all__ = ["selfreport_pass", "selfreport_dose", "selfreport_matrix", "tone_shifts", "fluency_sweep"]


def selfreport_pass(by_alpha: Sequence[dict], *, units, title: str = ""):
    """Fraction of emotions whose own word moves beyond the null's 95% band, per strength, with CIs."""
    a = np.array([r["alpha"] for r in by_alpha])
    f = np.array([r["frac_beyond_null"] for r in by_alpha])
    lo = np.array([r["frac_ci"][0] for r in by_alpha])
    hi = np.array([r["frac_ci"][1] for r in by_alpha])
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    ax.errorbar(a, f, yerr=[f - lo, hi - f], fmt="o-", capsize=3)
    ax.axhline(0.05, color="k", ls=":", label="chance (5%)")
    ax.set_xlabel(f"alpha (fraction of residual norm); 0.1 = {units.vector_multiple(0.1):.1f} emotion-vector norms")
    ax.set_ylabel("emotions beyond the null")
    ax.set_ylim(0, 1)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title)
    return fig


def selfreport_dose(sr: SelfReport, emotions: Sequence[str], *, title: str = ""):
    """Own-word change in log-probability against strength, with the null's 95% band for that word."""
    fig, axes = plt.subplots(1, len(emotions), figsize=(2.6 * len(emotions), 2.9), sharey=True, squeeze=False)
    d, E, a = sr.delta, sr.n_emotions, np.array(sr.alphas)
    order = np.argsort(a)
    for ax, e in zip(axes[0], emotions):
        i = sr.words.index(e)
        null = d[E:, :, i]  # [N, A]
        ax.fill_between(a[order], np.quantile(null, 0.025, 0)[order], np.quantile(null, 0.975, 0)[order],
                        color="0.8", label="null 95%")
        ax.plot(a[order], d[i, order, i], "o-", color="C3", label=f"steer {e}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(e, fontsize=9)
        ax.set_xlabel("alpha")
    axes[0][0].set_ylabel("change in log P(own word)")
    axes[0][0].legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def selfreport_matrix(matrix: np.ndarray, words: Sequence[str], *, title: str = ""):
    """Steered emotion (rows) x word (columns), change in log-probability, columns centred."""
    m = np.asarray(matrix, float)
    c = m - m.mean(0, keepdims=True)
    lim = np.quantile(np.abs(c), 0.99) or 1.0
    n = len(words)
    fig, ax = plt.subplots(figsize=(7, 6.2))
    im = ax.imshow(c, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    step = max(1, n // 24)
    ax.set_xticks(range(0, n, step), [words[k] for k in range(0, n, step)], rotation=90, fontsize=6)
    ax.set_yticks(range(0, n, step), [words[k] for k in range(0, n, step)], fontsize=6)
    ax.set_xlabel("word whose log-probability changes")
    ax.set_ylabel("steered emotion")
    fig.colorbar(im, ax=ax, shrink=0.7, label="change in log P (column-centred)")
    ax.set_title(title)
    return fig


def tone_shifts(summary: pd.DataFrame, *, title: str = ""):
    """Valence and arousal shift per emotion x strength, with CIs, against the null's 95% band."""
    measures = list(dict.fromkeys(summary.measure))
    fig, axes = plt.subplots(1, len(measures), figsize=(5.2 * len(measures), 3.6), squeeze=False)
    for ax, m in zip(axes[0], measures):
        s = summary[summary.measure == m].sort_values(["emotion", "alpha"]).reset_index(drop=True)
        x = np.arange(len(s))
        ax.bar(x, s.null_hi - s.null_lo, bottom=s.null_lo, color="0.85", width=0.8, label="null 95%")
        ax.errorbar(x, s["shift"], yerr=[s["shift"] - s.ci_lo, s.ci_hi - s["shift"]], fmt="o", color="C3",
                    capsize=2, label="emotion (95% CI)")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, [f"{e} {a:+g}" for e, a in zip(s.emotion, s.alpha)], rotation=70, fontsize=7)
        ax.set_ylabel(f"{m} shift (Warriner 1-9 scale)")
        ax.legend(frameon=False, fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def fluency_sweep(df: pd.DataFrame, *, usable: float, title: str = ""):
    """Median perplexity and repetition against strength: emotions, and the null (dashed)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    base = df[df.kind == "none"][["perplexity", "repetition"]].median()
    for kind, style in (("emotion", "o-"), ("null", "s--")):
        med = df[df.kind == kind].groupby("alpha")[["perplexity", "repetition"]].median()
        axes[0].plot(med.index, med.perplexity, style, label=kind, markersize=3)
        axes[1].plot(med.index, med.repetition, style, label=kind, markersize=3)
    axes[0].axhline(base.perplexity, color="k", lw=0.5, label="unsteered")
    axes[1].axhline(base.repetition, color="k", lw=0.5)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("perplexity under the unsteered model")
    axes[1].set_ylabel("repeated 3-grams (fraction)")
    for ax in axes:
        ax.set_xlabel("alpha (fraction of mean residual norm)")
        for sgn in (-1, 1):
            ax.axvline(sgn * usable, color="green", alpha=0.5, ls=":")
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title + f" (usable |alpha| <= {usable:g}, green)")
    fig.tight_layout()
    return fig
