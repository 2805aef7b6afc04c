"""HTML views and figure output: what a reader of the notebook and the book actually gets."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from emolib import plots, views


def test_token_view_colours_each_token_and_escapes_text():
    tokens = ["<b>", " calm", " down", "\n", " now"]
    scores = np.array([[0.0, 1.0], [5.0, 1.0], [0.0, 1.0], [0.0, 1.0], [-5.0, 1.0]])
    html = views.token_view(tokens, scores, ["calm", "afraid"], title="t1")._repr_html_()
    assert "<b>" not in html and "&lt;b&gt;" in html
    # one tab per emotion, one span per token in each
    assert html.count('type="radio"') == 2
    assert html.count("<span ") == 2 * len(tokens)
    # the high token is red, the low one blue, a flat emotion is uncoloured
    spans = re.findall(r'background:rgba\(([\d,]+),([\d.]+)\)" title="calm z=([-+\d.]+)"', html)
    assert spans[1][0] == "214,39,40" and float(spans[1][1]) > 0.3
    assert spans[4][0] == "31,119,180" and float(spans[4][1]) > 0.3
    flat = re.findall(r'background:rgba\([\d,]+,([\d.]+)\)" title="afraid', html)
    assert all(float(a) == 0 for a in flat)
    assert "http" not in html and "<script" not in html  # works offline, no scripts


def test_token_view_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="n_tokens=2"):
        views.token_view(["a", "b"], np.zeros((3, 1)), ["calm"])


def test_tabs_are_deterministic_and_bounded():
    a = views.tabs([("x", "<p>1</p>"), ("y", "<p>2</p>")])
    assert a == views.tabs([("x", "<p>1</p>"), ("y", "<p>2</p>")])
    assert a != views.tabs([("x", "<p>1</p>"), ("y", "<p>3</p>")])
    with pytest.raises(ValueError):
        views.tabs([])
    with pytest.raises(ValueError, match="at most"):
        views.tabs([(str(i), "") for i in range(100)])


def test_steered_examples_one_tab_per_direction_with_baseline_rows():
    grid = pd.DataFrame([
        {"prompt": 0, "emotion": "none", "alpha": 0.0, "text": "base0", "perplexity": 3.0},
        {"prompt": 1, "emotion": "none", "alpha": 0.0, "text": "base1", "perplexity": 3.0},
        *[{"prompt": p, "emotion": e, "alpha": a, "text": f"{e}{a}{p}", "perplexity": 4.0}
          for e in ("calm", "random") for a in (0.1, 0.2) for p in (0, 1)]])
    html = views.steered_examples(grid, prompts=["Say hi", "Describe a kitchen"])._repr_html_()
    labels = re.findall(r"<label[^>]*>([^<]*)</label>", html)
    assert labels == ["calm", "random (control)"]
    assert html.count("base0") == 2 and html.count("<table") == 2  # baseline row in each tab
    assert "calm0.21" in html and "Describe a kitchen" in html and "alpha +0.2" in html


def test_show_saves_and_closes_and_returns_nothing(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    assert plots.show(fig, tmp_path, "line") is None
    png = (tmp_path / "figures" / "line.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert not plt.fignum_exists(fig.number)
    # rendering is deterministic: the same figure gives the same bytes
    f1, a1 = plt.subplots(); a1.plot([0, 1])
    f2, a2 = plt.subplots(); a2.plot([0, 1])
    assert plots.png_bytes(f1) == plots.png_bytes(f2)


def test_rounded_rounds_numbers_inside_list_cells_too():
    import pandas as pd

    from emolib.views import rounded

    df = pd.DataFrame({"x": [0.123456, 2.0], "ci": [[0.1111111, 0.2222222], [1.0, 3.3333333]], "name": ["a", "b"]})
    out = rounded(df, 2)
    assert out.x.tolist() == [0.12, 2.0] and out.ci.tolist() == [[0.11, 0.22], [1.0, 3.33]]
    assert out.name.tolist() == ["a", "b"] and df.ci[0] == [0.1111111, 0.2222222]  # the input is left as it was
