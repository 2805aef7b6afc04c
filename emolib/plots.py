"""Figures for the chapters: each function draws one figure and returns it (the notebook shows it)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["savefig", "residual_norms", "accuracy_by_layer", "denoise_curve", "intensity_curves"]

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "font.size": 10, "axes.spines.top": False,
                     "axes.spines.right": False})


def savefig(fig, run_dir: str | Path | None, name: str):
    """Save ``fig`` as ``run_dir/figures/name.png`` (when a run folder is given) and return it."""
    if run_dir is not None:
        out = Path(run_dir) / "figures"
        out.mkdir(parents=True, exist_ok=True)
        fig.savefig(out / f"{name}.png", bbox_inches="tight")
    return fig


def residual_norms(norms: np.ndarray, bos_norms: np.ndarray | None = None, *, title: str = ""):
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    layers = np.arange(len(norms))
    ax.plot(layers, norms, "o-", label="mean over tokens (BOS excluded)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    if bos_norms is not None:
        ax.plot(layers, bos_norms, "s--", color="grey", label="BOS token")
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("residual L2 norm")
    ax.set_title(title or "Residual-stream norm by layer")
    ax.legend(frameon=False)
    return fig


def accuracy_by_layer(tables: dict[str, pd.DataFrame], *, metric: str = "top1", chosen: int | None = None,
                      title: str = ""):
    """One line per table (label -> classification_by_layer output), with bootstrap CI bands."""
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    for label, t in tables.items():
        ax.plot(t["layer"], t[metric], "o-", label=label, markersize=3)
        ax.fill_between(t["layer"], t[f"{metric}_lo"], t[f"{metric}_hi"], alpha=0.2)
    any_t = next(iter(tables.values()))
    ax.axhline(any_t[f"chance_{metric}"].iloc[0], color="k", ls=":", label="chance")
    if chosen is not None:
        ax.axvline(chosen, color="red", alpha=0.5, ls="--", label=f"chosen layer {chosen}")
    ax.set_xlabel("layer")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_ylabel(f"{metric.replace('top', 'top-')} accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    return fig


def denoise_curve(table: pd.DataFrame, *, title: str = ""):
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for m in ("top1", "top5"):
        ax.errorbar(table["variance"], table[m], yerr=[table[m] - table[f"{m}_lo"], table[f"{m}_hi"] - table[m]],
                    fmt="o-", capsize=3, label=m.replace("top", "top-"))
    for _, r in table.iterrows():
        ax.annotate(f"k={int(r['n_components'])}", (r["variance"], r["top1"]), textcoords="offset points",
                    xytext=(0, -12), ha="center", fontsize=7)
    ax.set_xlabel("fraction of neutral variance projected out")
    ax.set_ylabel("validation accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.legend(frameon=False)
    return fig


def intensity_curves(curves: list[dict], *, ncols: int = 4):
    """``curves``: dicts with ``id``, ``template``, ``values``, ``unit`` and ``scores`` {emotion: array}."""
    n = len(curves)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False)
    for ax, c in zip(axes.flat, curves):
        x = np.arange(len(c["values"]))
        for i, (emo, s) in enumerate(c["scores"].items()):
            s = np.asarray(s)
            z = (s - s.mean()) / (s.std() + 1e-9)
            ax.plot(x, z, "o-" if i == 0 else ".--", lw=2 if i == 0 else 1, label=emo, markersize=4)
        ax.set_xticks(x, [f"{v:g}" for v in c["values"]], rotation=60, fontsize=7)
        ax.set_title(c["template"].replace("{x}", "X")[:48], fontsize=8)
        ax.set_xlabel(c["unit"], fontsize=8)
        ax.legend(fontsize=7, frameon=False)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.supylabel("projection (z-scored within template)", fontsize=9)
    fig.tight_layout()
    return fig
