"""Figures for chapter 3's per-layer geometry study and its baseline comparison."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

__all__ = ["layer_curves", "decoding_bars", "covariate_heatmap"]


def layer_curves(table: pd.DataFrame, *, headline: int | None = None, title: str = ""):
    """Valence and arousal against layer: decoding r (with 95% CI) and best-PC |r|, raw and denoised,
    with the 95th percentile of the decoding permutation null as a grey band.

    ``table``: :func:`emolib.geometry_study.by_layer_table`.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, scale in zip(axes, ("valence", "arousal")):
        for denoised, style in ((True, "-"), (False, ":")):
            t = table[table.denoised == denoised].sort_values("layer")
            if t.empty:
                continue
            tag = "denoised" if denoised else "raw"
            ci = np.array(t[f"{scale}_cv_ci"].tolist())
            ax.plot(t.layer, t[f"{scale}_cv_r"], style, color="C0", marker="o", ms=3, label=f"decoding r ({tag})")
            if denoised:
                ax.fill_between(t.layer, ci[:, 0], ci[:, 1], color="C0", alpha=0.15)
                ax.fill_between(t.layer, -1, t[f"{scale}_cv_null95"], color="0.5", alpha=0.2,
                                label="decoding null, 95th pct")
            pc = t["pc1_valence_r"] if scale == "valence" else t["arousal_best_pc_r"]
            label = "|r| of PC1" if scale == "valence" else "|r| of best PC (1-3)"
            ax.plot(t.layer, pc, style, color="C3", marker="s", ms=3, label=f"{label} ({tag})")
        if headline is not None:
            ax.axvline(headline, color="k", lw=0.8, ls="--", label=f"headline layer {headline}")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_ylim(-1, 1)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("layer")
        ax.set_title(f"human {scale}")
    axes[0].set_ylabel("r with human ratings (Warriner)")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def decoding_bars(table: pd.DataFrame, *, title: str = ""):
    """Cross-validated decoding r (95% CI) of valence and arousal per space (:func:`baseline_comparison`)."""
    t = table[table["valence_cv_ci"].notna()] if "valence_cv_ci" in table else table
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.5 * len(t) + 1.6), sharey=True)
    for ax, scale in zip(axes, ("valence", "arousal")):
        vals = t[f"{scale}_cv_r"].to_numpy(float)
        ci = np.array(t[f"{scale}_cv_ci"].tolist(), dtype=float)
        ax.barh(list(t.index), vals, xerr=np.abs(np.array([vals - ci[:, 0], ci[:, 1] - vals])), capsize=3,
                color=["C0"] + ["C7"] * (len(t) - 1))
        shuf = table.index[table.index.str.startswith("shuffled")]
        if len(shuf):
            ax.axvline(table.loc[shuf[0], f"{scale}_cv_r_95"], color="C3", ls="--", lw=1,
                       label="shuffled labels, 95th pct")
            ax.legend(fontsize=7)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_xlim(-1, 1)
        ax.set_xlabel(f"decoding r, human {scale} (95% CI)")
    axes[0].invert_yaxis()
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def covariate_heatmap(r: pd.DataFrame, *, title: str = ""):
    """Signed r of each top PC (rows) with each covariate (columns); "n/a" where r is undefined (NaN)."""
    fig, ax = plt.subplots(figsize=(1.3 * r.shape[1] + 2, 0.5 * r.shape[0] + 1.5))
    im = ax.imshow(r.to_numpy(float), cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(r.shape[1]), list(r.columns), rotation=30, ha="right")
    ax.set_yticks(range(r.shape[0]), list(r.index))
    for i in range(r.shape[0]):
        for j in range(r.shape[1]):
            v = r.iat[i, j]
            ax.text(j, i, "n/a" if np.isnan(v) else f"{v:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, label="Pearson r")
    ax.set_title(title)
    fig.tight_layout()
    return fig
