"""HTML views for the chapters: text a reader can read, where a figure would only show a grid.

Each function returns an :class:`HtmlView`, which a notebook shows as its ``text/html`` output
and the static book renders as is. The views switch between panels with radio buttons and CSS
alone (no scripts, nothing fetched), so they work offline, in JupyterLab and in the built book.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["HtmlView", "tabs", "token_colours", "token_view", "steered_examples", "rounded"]

# Generic rules: the k-th radio button shows the k-th panel. Panels are the only <div>s and the
# buttons the only <input>s among a tab set's children, so nth-of-type pairs them without ids.
_MAX_TABS = 32
_CSS = "".join(
    [".emo-tabs{margin:.4em 0 1em}.emo-tabs>input{position:absolute;opacity:0;width:1px;height:1px}",
     ".emo-tabs>label{display:inline-block;padding:.15em .6em;margin:0 .25em .3em 0;border:1px solid #bbb;",
     "border-radius:.3em;cursor:pointer;font-size:.85em;background:#f6f6f6}",
     ".emo-tabs>input:checked+label{background:#34495e;color:#fff;border-color:#34495e}",
     ".emo-tabs>input:focus-visible+label{outline:2px solid #4a90d9}",
     ".emo-tabs>div{display:none;border-top:1px solid #ddd;padding-top:.4em}",
     ".emo-tokens{line-height:1.9;white-space:pre-wrap;word-break:break-word;font-size:.9em}",
     ".emo-tokens span{border-radius:2px;padding:.05em 0}",
     ".emo-note{font-size:.8em;color:#555;margin:.2em 0}",
     ".emo-steer{border-collapse:collapse;font-size:.85em;width:100%;table-layout:fixed}",
     ".emo-steer th,.emo-steer td{border:1px solid #ddd;padding:.3em .4em;vertical-align:top;text-align:left;",
     "white-space:pre-wrap;word-break:break-word}",
     ".emo-steer td.a{width:6.5em;white-space:nowrap}.emo-steer small{color:#777}"]
    + [f".emo-tabs>input:nth-of-type({k}):checked~div:nth-of-type({k}){{display:block}}"
       for k in range(1, _MAX_TABS + 1)])


@dataclass(frozen=True)
class HtmlView:
    """A piece of HTML that notebooks display as such (``_repr_html_``)."""

    html: str

    def _repr_html_(self) -> str:
        return self.html


def tabs(panels: Sequence[tuple[str, str]], *, caption: str = "") -> HtmlView:
    """A tab set: ``panels`` are ``(label, inner_html)``; the first is shown until another is picked."""
    if not panels:
        raise ValueError("a tab set needs at least one panel")
    if len(panels) > _MAX_TABS:
        raise ValueError(f"at most {_MAX_TABS} panels in a tab set, got {len(panels)}")
    # A stable name from the content: the same run gives byte-identical notebooks.
    group = "emo-" + hashlib.sha256("".join(p for _, p in panels).encode()).hexdigest()[:10]
    parts = [f"<style>{_CSS}</style>", '<div class="emo-tabs">']
    if caption:
        parts.insert(1, f'<p class="emo-note">{html.escape(caption)}</p>')
    for k, (label, _) in enumerate(panels):
        checked = " checked" if k == 0 else ""
        parts.append(f'<input type="radio" name="{group}" id="{group}-{k}"{checked}>'
                     f'<label for="{group}-{k}">{html.escape(label)}</label>')
    parts += [f"<div>{inner}</div>" for _, inner in panels]
    parts.append("</div>")
    return HtmlView("".join(parts))


def token_colours(z: np.ndarray, *, clip: float = 2.5) -> list[str]:
    """CSS backgrounds for z-scores: red above the text's usual level, blue below, white at 0."""
    out = []
    for v in np.clip(np.nan_to_num(np.asarray(z, dtype=float)), -clip, clip):
        a = abs(v) / clip * 0.85
        rgb = "214,39,40" if v > 0 else "31,119,180"
        out.append(f"rgba({rgb},{a:.2f})")
    return out


def token_view(tokens: Sequence[str], scores: np.ndarray, emotions: Sequence[str], *, title: str = "",
               clip: float = 2.5) -> HtmlView:
    """The text coloured token by token, one tab per emotion.

    ``scores`` is ``[n_tokens, n_emotions]`` (projections onto each emotion); each emotion is
    z-scored over the text, as in the heatmap, so colour means "more (red) or less (blue) than
    usual for this text". Hovering a token shows its value.
    """
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (len(tokens), len(emotions)):
        raise ValueError(f"scores must be [n_tokens={len(tokens)}, n_emotions={len(emotions)}], "
                         f"got {scores.shape}")
    z = (scores - scores.mean(0)) / (scores.std(0) + 1e-9)
    panels = []
    for j, emotion in enumerate(emotions):
        spans = "".join(f'<span style="background:{c}" title="{html.escape(emotion)} z={v:+.2f}">'
                        f"{html.escape(t)}</span>"
                        for t, c, v in zip(tokens, token_colours(z[:, j], clip=clip), z[:, j]))
        panels.append((emotion, f'<div class="emo-tokens">{spans}</div>'))
    caption = (f"{title} — " if title else "") + (
        f"pick an emotion; red = projection above this text's usual level, blue = below "
        f"(z-scored over the text, clipped at ±{clip:g})")
    return tabs(panels, caption=caption)


def steered_examples(grid: pd.DataFrame, *, prompts: Sequence[str], unit: str = "alpha") -> HtmlView:
    """Steered continuations, one tab per steered direction; rows are strengths, columns prompts.

    ``grid`` has columns ``prompt`` (index into ``prompts``), ``emotion`` (``"none"`` marks the
    unsteered baseline, shown as the first row of every tab), ``alpha``, ``text`` and optionally
    ``perplexity``. A ``"random"`` direction, if present, is labelled as the control.
    """
    missing = {"prompt", "emotion", "alpha", "text"} - set(grid.columns)
    if missing:
        raise ValueError(f"grid lacks columns {sorted(missing)}")
    used = sorted(grid.prompt.unique())
    base = grid[grid.emotion == "none"]
    directions = [e for e in dict.fromkeys(grid.emotion) if e != "none"]
    directions = [e for e in directions if e != "random"] + [e for e in directions if e == "random"]

    def cell(rows: pd.DataFrame, p: int) -> str:
        r = rows[rows.prompt == p]
        if r.empty:
            return "<td></td>"
        r = r.iloc[0]
        ppl = f"<br><small>perplexity {r.perplexity:.1f}</small>" if "perplexity" in r and pd.notna(r.perplexity) else ""
        return f"<td>{html.escape(str(r.text)) or '<small>(empty)</small>'}{ppl}</td>"

    head = "".join(f"<th>{html.escape(prompts[p])}</th>" for p in used)
    panels = []
    for e in directions:
        rows = [f'<tr><td class="a">unsteered</td>{"".join(cell(base, p) for p in used)}</tr>']
        sub = grid[grid.emotion == e]
        for a in sorted(sub.alpha.unique()):
            at = sub[sub.alpha == a]
            rows.append(f'<tr><td class="a">{html.escape(unit)} {a:+g}</td>{"".join(cell(at, p) for p in used)}</tr>')
        table = f'<table class="emo-steer"><tr><th class="a"></th>{head}</tr>{"".join(rows)}</table>'
        panels.append(("random (control)" if e == "random" else e, table))
    return tabs(panels, caption="pick a steering direction; each row is one strength, each column one prompt")


def rounded(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """``df`` for display: numbers rounded, and the numbers inside list cells (CIs, null bands) too,
    which ``DataFrame.round`` leaves at full precision."""
    def cell(v):
        if isinstance(v, (list, tuple, np.ndarray)) and all(isinstance(x, (int, float, np.number)) for x in v):
            return [round(float(x), digits) for x in v]
        return v
    return df.round(digits).map(cell)
