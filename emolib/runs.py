"""Run folders: the files chapters share (``book/runs/<model>/``), and their ``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path

from emolib._io import atomic_write_json

__all__ = ["read_metrics", "update_metrics", "read_json", "write_json"]


def read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: run the chapter that writes it first")
    return json.loads(path.read_text())


def write_json(path: str | Path, obj: dict) -> Path:
    return atomic_write_json(path, obj)


def read_metrics(run_dir: str | Path) -> dict:
    p = Path(run_dir) / "metrics.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def update_metrics(run_dir: str | Path, values: dict) -> dict:
    """Merge ``values`` into ``run_dir/metrics.json`` (top-level keys replaced), atomically."""
    metrics = read_metrics(run_dir)
    metrics.update(values)
    atomic_write_json(Path(run_dir) / "metrics.json", metrics)
    return metrics
