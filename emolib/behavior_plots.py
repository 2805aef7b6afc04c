"""Chapter 5's figures: the readout validation and the ethics dose-response against its null."""

from __future__ import annotations

import numpy as np
import pandas as pd

from emolib.plots import plt  # the headless backend is set there

__all__ = ["readout_validation", "logodds_dose_response"]


def readout_validation(table: pd.DataFrame, *, threshold: float, title: str = ""):
    """Accuracy and both-order accuracy per readout with their CIs, and the gate threshold."""
    fig, ax = plt.subplots(figsize=(8.0, 3.2))
    x = np.arange(len(table))
    for k, (col, label) in enumerate([("accuracy", "accuracy (content preference)"),
                                      ("both_order_accuracy", "correct in both orders")]):
        vals = table[col].to_numpy()
        ci = np.array(table[f"{col}_ci"].tolist())
        ax.bar(x + (k - 0.5) * 0.38, vals, width=0.36, label=label,
               yerr=[vals - ci[:, 0], ci[:, 1] - vals], capsize=3)
    ax.axhline(threshold, color="k", ls="--", lw=1, label=f"gate ({threshold:.0%}, both orders)")
    ax.axhline(0.5, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(x, table.index)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"control questions (n = {int(table.n.iloc[0])})")
    # beside the axes: inside, the gate line ran through the legend
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def logodds_dose_response(table: pd.DataFrame, *, title: str = ""):
    """Mean paired change of the unethical log-odds against strength per emotion, with its CI, and the
    2.5-97.5% band of the random directions at each strength (grey)."""
    emotions = list(dict.fromkeys(table.emotion))
    ncols = min(3, len(emotions))
    nrows = -(-len(emotions) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False, sharey=True)
    for ax, e in zip(axes.flat, emotions):
        g = table[table.emotion == e].sort_values("alpha")
        a = np.r_[g.alpha.to_numpy(), 0.0]
        order = np.argsort(a)
        band_lo = np.r_[[b[0] for b in g.null_band], 0.0][order]
        band_hi = np.r_[[b[1] for b in g.null_band], 0.0][order]
        ax.fill_between(a[order], band_lo, band_hi, color="grey", alpha=0.3, label="random directions")
        mean = np.r_[g.change.to_numpy(), 0.0][order]
        lo = np.r_[[c[0] for c in g.ci], 0.0][order]
        hi = np.r_[[c[1] for c in g.ci], 0.0][order]
        ax.plot(a[order], mean, "o-", color="C0", markersize=3, label=e)
        ax.fill_between(a[order], lo, hi, color="C0", alpha=0.15)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(e, fontsize=9)
        ax.set_xlabel("alpha", fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[len(emotions):]:
        ax.axis("off")
    axes[0, 0].set_ylabel("change in log-odds\n(unethical vs ethical)")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
