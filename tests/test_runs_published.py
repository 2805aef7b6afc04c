"""The executed runs a reader sees: every chapter shows the figures its source draws, and no
temporary folder of the run that made it leaks into the published notebooks."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import ROOT
from emolib.book import CHAPTERS
from emolib.models import EMBEDDED_MODELS

RUNS = sorted(p for p in (ROOT / "book" / "runs").iterdir() if p.is_dir() and not p.name.endswith("-quick"))
TMP_RUN = re.compile(r"\.[\w.-]+\.tmp\b|/tmp/|\bold-\d+\b")


def expected_figures(chapter: str) -> int:
    """The figures a chapter's source shows: one per ``plots.show(`` call (loops show more)."""
    return (ROOT / "notebooks" / f"{chapter}.md").read_text().count("plots.show(")


def image_outputs(notebook: Path) -> int:
    nb = json.loads(notebook.read_text())
    return sum("image/png" in out.get("data", {}) for cell in nb["cells"] for out in cell.get("outputs", []))


def published_chapters(run: Path) -> list:
    """The chapters of ``run`` that the book publishes (listed in ``_toc.yml``)."""
    toc = (ROOT / "_toc.yml").read_text()
    return [ch for ch in CHAPTERS if f"book/runs/{run.name}/{ch.name}" in toc]


@pytest.mark.parametrize("model", list(EMBEDDED_MODELS))
def test_both_embedded_models_publish_every_chapter(model):
    assert [ch.name for ch in published_chapters(ROOT / "book" / "runs" / model)] == [c.name for c in CHAPTERS]
    for ch in CHAPTERS:
        assert (ROOT / "book" / "runs" / model / f"{ch.name}.ipynb").is_file(), f"{model}/{ch.name}"


def check_run_figures(run: Path, chapters=None) -> None:
    """Every published chapter notebook of ``run`` (or every one of ``chapters``) holds at least the figures
    its source shows (and at least one)."""
    for ch in published_chapters(run) if chapters is None else chapters:
        want = max(1, expected_figures(ch.name))
        got = image_outputs(run / f"{ch.name}.ipynb")
        assert got >= want, f"{run.name}/{ch.name}: {got} figures in the executed notebook, its source shows {want}"


def check_no_temporary_paths(run: Path) -> None:
    for nb in sorted(run.glob("*.ipynb")):
        hits = TMP_RUN.findall(nb.read_text())
        assert not hits, f"{nb.relative_to(ROOT)} mentions temporary run folders: {hits[:3]}"


def test_every_chapter_source_shows_figures():
    for ch in CHAPTERS:
        assert expected_figures(ch.name) >= 1, ch.name


def test_the_check_fails_on_a_run_without_figures(tmp_path):
    for ch in CHAPTERS:
        (tmp_path / f"{ch.name}.ipynb").write_text(json.dumps({"cells": [{"outputs": [
            {"output_type": "execute_result", "data": {"text/plain": "<Figure size 640x480 with 1 Axes>"}}]}]}))
    with pytest.raises(AssertionError, match="0 figures"):
        check_run_figures(tmp_path, CHAPTERS)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_committed_runs_show_their_figures(run):
    check_run_figures(run)


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_committed_runs_hold_no_temporary_paths(run):
    check_no_temporary_paths(run)


def check_parameters_shown(run: Path) -> None:
    """The values a chapter ran with stay on its page (collapsed), not only the source's defaults."""
    for nb_path in sorted(run.glob("*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        injected = [c for c in cells if "injected-parameters" in c["metadata"].get("tags", [])]
        assert len(injected) == 1, f"{nb_path.name}: {len(injected)} injected-parameters cells"
        tags = injected[0]["metadata"]["tags"]
        assert "hide-input" in tags and "remove-cell" not in tags, f"{nb_path.name}: {tags}"
        assert "model_name" in "".join(injected[0]["source"]), nb_path.name


@pytest.mark.parametrize("run", RUNS, ids=[r.name for r in RUNS])
def test_committed_runs_keep_the_parameters_they_ran_with(run):
    check_parameters_shown(run)
