"""The book's {metric} role: dotted keys, keys containing dots, counts, and formats."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("emobook", Path(__file__).parents[1] / "book" / "_ext" / "emobook.py")
emobook = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emobook)

METRICS = {"a": {"b": [1.5, 2.5]}, "rate": {"calm@+0.100": {"rate": 0.25}, "calm@-0.100": {"rate": 0.5}},
           "flags": {"x": True, "y": False, "z": True}}


def test_lookup_paths():
    assert emobook._lookup(METRICS, "a.b.1") == 2.5
    assert emobook._lookup(METRICS, "rate.calm@+0.100.rate") == 0.25
    assert emobook._lookup(METRICS, "rate.calm@-0.100") == {"rate": 0.5}
    with pytest.raises(KeyError):
        emobook._lookup(METRICS, "rate.calm@+0.200.rate")
    with pytest.raises(KeyError):
        emobook._lookup(METRICS, "nothing")


def test_formats():
    assert emobook._format(0.25, ".1%") == "25.0%"
    assert emobook._format([0.1, 0.2], ".2f") == "[0.10, 0.20]"
    assert emobook._format(METRICS["flags"], "ntrue") == "2"
    assert emobook._format(METRICS["flags"], "len") == "3"
    assert emobook._format(3, "") == "3"
