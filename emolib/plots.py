"""Figures for the chapters: each function draws one figure and returns it; :func:`show` saves it
under the run folder and puts it in the notebook's output."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

# A non-interactive backend: chapters run headless (papermill, CI). Figures reach the notebook
# through show(), which renders the PNG itself, so nothing depends on the inline backend.
matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["show", "savefig", "png_bytes", "residual_norms", "accuracy_by_layer", "denoise_curve",
           "intensity_curves", "similarity_heatmap", "family_heatmap", "pc_map", "rsa_matrix", "elo_bars", "scatter_r",
           "token_heatmap"]

plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "font.size": 10, "axes.spines.top": False,
                     "axes.spines.right": False})


def png_bytes(fig) -> bytes:
    """The figure as PNG bytes (the same bytes are saved and shown)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(fig, run_dir: str | Path | None, name: str) -> None:
    """Save ``fig`` as ``run_dir/figures/name.png`` (when a run folder is given), show that image in
    the notebook's output (an ``image/png`` output, so the rendered book has it), and close ``fig``.

    Returns None on purpose: a figure left as a cell's last value would be shown a second time.
    """
    data = png_bytes(fig)
    plt.close(fig)
    if run_dir is not None:
        from emolib._io import atomic_write_bytes

        atomic_write_bytes(Path(run_dir) / "figures" / f"{name}.png", data)
    if _in_notebook():
        from IPython.display import Image, display

        display(Image(data=data, format="png"))


def savefig(fig, run_dir: str | Path | None, name: str):
    """Save ``fig`` as ``run_dir/figures/name.png`` (when a run folder is given) and return it, without
    showing it (for scripts; chapters use :func:`show`)."""
    if run_dir is not None:
        from emolib._io import atomic_write_bytes

        atomic_write_bytes(Path(run_dir) / "figures" / f"{name}.png", png_bytes(fig))
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


def similarity_heatmap(sim: np.ndarray, names: list[str], order: np.ndarray, *, families: list[str] | None = None,
                       title: str = ""):
    """The full clustered cosine-similarity matrix; sized so that every label stays legible when enlarged."""
    n = len(names)
    size = max(6.0, n * 0.085)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    m = sim[np.ix_(order, order)]
    im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    fs = 6 if n > 60 else 9
    ax.set_xticks(range(n), [names[i] for i in order], rotation=90, fontsize=fs)
    ax.set_yticks(range(n), [names[i] for i in order], fontsize=fs)
    if families is not None:
        cmap = plt.get_cmap("tab20")
        fam_ids = {f: i for i, f in enumerate(sorted(set(families)))}
        for tick, i in zip(ax.get_yticklabels(), order):
            tick.set_color(cmap(fam_ids[families[i]] % 20))
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.01, label="cosine similarity")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def family_heatmap(sim: np.ndarray, families: list[str], *, title: str = ""):
    """Mean cosine similarity between emotion families (diagonal: within-family, self-pairs excluded)."""
    fams = sorted(set(families))
    idx = {f: [i for i, x in enumerate(families) if x == f] for f in fams}
    m = np.zeros((len(fams), len(fams)))
    for a, fa in enumerate(fams):
        for b, fb in enumerate(fams):
            block = sim[np.ix_(idx[fa], idx[fb])]
            if a == b:
                k = len(idx[fa])
                m[a, b] = (block.sum() - np.trace(block)) / max(k * (k - 1), 1)
            else:
                m[a, b] = block.mean()
    fig, ax = plt.subplots(figsize=(7, 6))
    lim = np.abs(m).max()
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim)
    ax.set_xticks(range(len(fams)), fams, rotation=60, ha="right")
    ax.set_yticks(range(len(fams)), fams)
    for a in range(len(fams)):
        for b in range(len(fams)):
            ax.text(b, a, f"{m[a, b]:.2f}", ha="center", va="center", fontsize=6.5)
    fig.colorbar(im, ax=ax, fraction=0.04, label="mean cosine similarity")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def pc_map(scores: np.ndarray, names: list[str], *, color: list | np.ndarray, color_label: str,
           categorical: bool, pcs=(0, 1), explained: np.ndarray | None = None, title: str = ""):
    """Labelled scatter of two principal components."""
    fig, ax = plt.subplots(figsize=(11, 8.5))
    x, y = scores[:, pcs[0]], scores[:, pcs[1]]
    if categorical:
        cats = sorted(set(color))
        cmap = plt.get_cmap("tab20")
        for i, c in enumerate(cats):
            sel = [j for j, v in enumerate(color) if v == c]
            ax.scatter(x[sel], y[sel], s=18, color=cmap(i % 20), label=c)
        ax.legend(fontsize=7, ncol=2, frameon=False, loc="best", title=color_label, title_fontsize=8)
    else:
        col = np.asarray(color, dtype=float)
        ok = ~np.isnan(col)
        ax.scatter(x[~ok], y[~ok], s=14, color="lightgrey", label="no human rating")
        sc = ax.scatter(x[ok], y[ok], s=18, c=col[ok], cmap="coolwarm_r" if "valence" in color_label else "viridis")
        fig.colorbar(sc, ax=ax, fraction=0.03, label=color_label)
    for j, n in enumerate(names):
        ax.annotate(n, (x[j], y[j]), fontsize=6.5, xytext=(2, 2), textcoords="offset points")
    lab = lambda k: f"PC{k + 1}" + (f" ({explained[k]:.0%} of variance)" if explained is not None else "")  # noqa: E731
    ax.set_xlabel(lab(pcs[0]))
    ax.set_ylabel(lab(pcs[1]))
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def rsa_matrix(m: np.ndarray, *, labels: list | None = None, title: str = ""):
    fig, ax = plt.subplots(figsize=(5.5, 4.6))
    im = ax.imshow(m, cmap="viridis", vmin=min(0, m.min()), vmax=1)
    if labels is not None:
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, fraction=0.045, label="RSA (Spearman)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def elo_bars(names: list[str], elo: np.ndarray, categories: list[str], *, top: int = 12, title: str = ""):
    order = np.argsort(elo)
    pick = np.r_[order[:top], order[-top:]]
    fig, ax = plt.subplots(figsize=(8, 0.22 * len(pick) + 1))
    cats = sorted(set(categories))
    cmap = plt.get_cmap("tab10")
    ax.barh(range(len(pick)), elo[pick], color=[cmap(cats.index(categories[i]) % 10) for i in pick])
    ax.set_yticks(range(len(pick)), [names[i][:60] for i in pick], fontsize=7)
    for c in cats:
        ax.bar(0, 0, color=cmap(cats.index(c) % 10), label=c)
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    ax.set_xlabel("Elo (0 = average activity)")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def scatter_r(x, y, *, xlabel: str, ylabel: str, labels: list[str] | None = None, title: str = ""):
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(x, y, s=14)
    if labels is not None:
        for xi, yi, lab in zip(x, y, labels):
            ax.annotate(lab, (xi, yi), fontsize=6.5, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def token_heatmap(tokens: list[str], scores: np.ndarray, emotions: list[str], *, title: str = "",
                  max_tokens: int = 90):
    """Tokens along x, emotions along y; each emotion's projection z-scored over the text."""
    tokens, scores = tokens[:max_tokens], scores[:max_tokens]
    z = (scores - scores.mean(0)) / (scores.std(0) + 1e-9)
    fig, ax = plt.subplots(figsize=(max(6, 0.13 * len(tokens) + 2), 0.28 * len(emotions) + 1.4))
    im = ax.imshow(z.T, aspect="auto", cmap="RdBu_r", vmin=-2.5, vmax=2.5, interpolation="nearest")
    ax.set_yticks(range(len(emotions)), emotions, fontsize=7)
    ax.set_xticks(range(len(tokens)), [t.replace("\n", "\\n") for t in tokens], rotation=90, fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.02, label="z-scored projection")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig
