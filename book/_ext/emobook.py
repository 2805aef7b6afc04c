"""Sphinx roles that put measured numbers into the book's prose at build time.

    {metric}`gemma-3-270m:heldout_top1:.1%`   -> a value from book/runs/gemma-3-270m/metrics.json
    {datastat}`stories.n`                      -> a value from emolib.data.corpus_stats()

Keys may be dotted paths (``intensity_spearman.int-01:afraid.rho``; list items by index; a key
that itself contains dots, like ``unethical_rate.calm@+0.100.rate``, is matched whole). The optional
last part is a Python format spec, or ``ntrue`` (how many values of a mapping are true) or ``len``.
A missing run or key is a build warning, which the book's ``-W`` build turns into an error: prose
can never show a number the code did not measure.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=None)
def _metrics(model: str) -> dict:
    return json.loads((ROOT / "book" / "runs" / model / "metrics.json").read_text())


@lru_cache(maxsize=1)
def _corpus_stats() -> dict:
    from emolib.data import corpus_stats, load_corpus

    return corpus_stats(load_corpus())


def _lookup(obj, path: str):
    parts = path.split(".")
    while parts:
        if isinstance(obj, list):
            obj, parts = obj[int(parts[0])], parts[1:]
            continue
        # the longest run of parts that is a key wins, so keys containing dots are found whole
        for n in range(len(parts), 0, -1):
            key = ".".join(parts[:n])
            if isinstance(obj, dict) and key in obj:
                obj, parts = obj[key], parts[n:]
                break
        else:
            raise KeyError(parts[0])
    return obj


def _format(value, spec: str) -> str:
    if value is None:
        return "n/a"   # a statistic that is undefined (say, a correlation with a constant)
    if spec == "ntrue":
        return str(sum(bool(v) for v in (value.values() if isinstance(value, dict) else value)))
    if spec == "len":
        return str(len(value))
    if isinstance(value, list) and len(value) == 2 and spec:
        return f"[{format(value[0], spec)}, {format(value[1], spec)}]"
    return format(value, spec) if spec else str(value)


def _role(getter):
    def role(name, rawtext, text, lineno, inliner, options=None, content=None):
        parts = text.split(":")
        try:
            source, key, spec = getter(parts)
            value = _lookup(source, key)
            return [nodes.Text(_format(value, spec))], []
        except Exception as exc:  # noqa: BLE001 - every failure becomes a build warning
            msg = inliner.reporter.warning(f"{name} {text!r}: {type(exc).__name__}: {exc}", line=lineno)
            return [inliner.problematic(rawtext, rawtext, msg)], [msg]
    return role


def _metric_parts(parts):
    model, key = parts[0], parts[1]
    return _metrics(model), key, ":".join(parts[2:])


def _datastat_parts(parts):
    return _corpus_stats(), parts[0], ":".join(parts[1:])


def _drop_thebe(app):
    """Jupyter Book 1.x runs sphinx-thebe's script registration twice, declaring ``const
    THEBE_JS_URL`` twice (a SyntaxError in the browser), and thebe would fetch code from a CDN.
    This book runs no live code, so its listener is removed before any page is read."""
    for event, listeners in app.events.listeners.items():
        listeners[:] = [ls for ls in listeners if getattr(ls.handler, "__module__", "") != "sphinx_thebe"]


def setup(app):
    app.connect("builder-inited", _drop_thebe)
    app.add_role("metric", _role(_metric_parts))
    app.add_role("datastat", _role(_datastat_parts))
    return {"version": "1.0", "parallel_read_safe": True}
