"""The README's main command in its quick form: every chapter runs end to end on the default model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import ROOT
from emolib.book import CHAPTERS, run_chapters

pytestmark = pytest.mark.real_model

REQUIRED = {
    "01_capture": ["n_texts", "n_tokens", "capture_tokens_per_s", "compute_dtype"],
    "02_extraction": ["chosen_layer", "chosen_layer_rule", "heldout_top1", "heldout_top5", "chance_top1",
                      "intensity_spearman", "heldout_writer_top1", "heldout_writer_top1_ci",
                      "heldout_writer_top1_by_layer", "dtype_agreement"],
    "03_geometry": ["geometry_by_layer", "geometry_layer", "geometry_layer_rule", "valence_cv_r", "valence_cv_ci",
                    "valence_max_over_layers_p", "pc1_valence_r", "pc_nuisance_r", "family_similarity",
                    "n_rated_emotions", "baselines", "stimulus_rsa"],
    "04_steering": ["usable_alpha_max", "steering_units", "selfreport_by_alpha", "selfreport_diagonal_dominance",
                    "selfreport_per_emotion", "tone_by_emotion", "random_null"],
    "05_behavior": ["readout_validity", "readout_used", "readout_gate_passed", "elo_probe_r", "elo_steering_shift",
                    "unethical_logodds", "unethical_logodds_baseline", "n_pressure_scenarios"],
}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    return run_chapters("gemma-3-270m", quick=True, out=out, device="cpu")


def test_every_chapter_writes_its_executed_notebook(quick_run):
    for ch in CHAPTERS:
        assert (quick_run / f"{ch.name}.ipynb").is_file(), ch.name


def test_metrics_hold_the_required_keys(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    for chapter, keys in REQUIRED.items():
        for k in keys:
            assert k in metrics, f"{chapter} did not write {k}"
    assert metrics["quick"] is True
    assert metrics["n_emotions"] == 24
    assert 0 <= metrics["chosen_layer"] < metrics["n_layers"]
    assert metrics["heldout_top1"] > metrics["chance_top1"], "vectors must beat chance even in the quick run"
    assert metrics["capture_tokens_per_s"] > 0 and math.isfinite(metrics["capture_tokens_per_s"])
    assert set(metrics["baselines"]) == {"model", "input_embeddings", "sentence_embeddings", "shuffled_labels"}


def test_run_folder_has_vectors_and_figures(quick_run):
    assert (quick_run / "vectors.safetensors").is_file() and (quick_run / "vectors.json").is_file()
    figs = {p.stem for p in (quick_run / "figures").glob("*.png")}
    assert {"residual_norms", "validation_by_layer", "heldout_by_layer", "geometry_by_layer", "selfreport_pass",
            "tone_shifts", "readout_validation"} <= figs


def test_rerun_with_unchanged_inputs_reuses_every_chapter(quick_run, capsys):
    before = {p.name: p.read_bytes() for p in quick_run.glob("*.ipynb")}
    capsys.readouterr()
    again = run_chapters("gemma-3-270m", quick=True, out=quick_run.parent, device="cpu")
    err = capsys.readouterr().err
    assert again == quick_run
    for ch in CHAPTERS:
        assert f"reusing {ch.name}" in err, ch.name
    assert {p.name: p.read_bytes() for p in quick_run.glob("*.ipynb")} == before


def test_quick_run_notebooks_show_figures_and_no_temporary_paths(quick_run):
    from test_runs_published import check_no_temporary_paths, check_run_figures

    check_run_figures(quick_run)
    check_no_temporary_paths(quick_run)


def _build_chapters_book(run: Path, root: Path) -> Path:
    """A book of just ``run``'s chapters, built with the project's configuration (strict)."""
    import shutil

    from emolib.book import build_book

    for sub in ("_static", "_ext"):
        shutil.copytree(ROOT / "book" / sub, root / "book" / sub)
    shutil.copy(ROOT / "_config.yml", root / "_config.yml")
    # Under the model's name: the project's configuration keeps every *-quick folder out of its book.
    name = run.name.removesuffix("-quick")
    shutil.copytree(run, root / "book" / "runs" / name, ignore=shutil.ignore_patterns(".*"))
    pages = [f"book/runs/{name}/{ch.name}" for ch in CHAPTERS]
    (root / "_toc.yml").write_text("format: jb-book\nroot: " + pages[0] + "\nchapters:\n"
                                   + "".join(f"  - file: {p}\n" for p in pages[1:]))
    return build_book(root=root).parent


def test_quick_book_pages_show_their_figures_in_a_browser(quick_run, tmp_path):
    """The rendered chapters of a fresh run, in a real browser: every figure the executed notebook
    holds is on the page and loaded; the steered examples and the token monitor switch tabs."""
    import browser
    from test_runs_published import image_outputs

    built = _build_chapters_book(quick_run, tmp_path / "quickbook")
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    drv = browser.driver()
    try:
        with browser.serve(built) as base:
            for ch in CHAPTERS:
                page = f"book/runs/{quick_run.name.removesuffix('-quick')}/{ch.name}.html"
                seen = browser.look(drv, f"{base}/{page}")
                want = image_outputs(quick_run / f"{ch.name}.ipynb")
                assert want >= 1, f"{ch.name}: its executed notebook holds no figure"
                browser.assert_readable(seen, ch.name, min_images=want)
                if ch.name in ("04_steering", "05_behavior"):
                    _check_tabs_switch(drv, ch.name)
                drv.save_screenshot(str(artifacts / f"quick_{ch.name}.png"))
    finally:
        drv.quit()


def _check_tabs_switch(drv, chapter: str) -> None:
    sets = drv.find_elements("css selector", "div.emo-tabs")
    assert sets, f"{chapter}: no tabbed view on the page"
    first = sets[0]
    labels = first.find_elements("css selector", ":scope > label")
    panels = first.find_elements("css selector", ":scope > div")
    assert len(labels) >= 2 and len(labels) == len(panels), chapter
    assert panels[0].is_displayed() and not panels[1].is_displayed()
    drv.execute_script("arguments[0].scrollIntoView()", labels[1])
    labels[1].click()
    assert panels[1].is_displayed() and not panels[0].is_displayed(), f"{chapter}: picking a tab did not switch"
