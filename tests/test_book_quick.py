"""The README's main command in its quick form: every chapter runs end to end on the default model."""

from __future__ import annotations

import json
import math

import pytest

from emolib.book import CHAPTERS, run_chapters

pytestmark = pytest.mark.real_model

REQUIRED = {
    "01_capture": ["n_texts", "n_tokens", "capture_tokens_per_s"],
    "02_extraction": ["chosen_layer", "heldout_top1", "heldout_top5", "chance_top1", "intensity_spearman"],
    "03_geometry": ["pc_variance", "pc1_valence_r", "pc1_valence_ci", "pc1_valence_p", "arousal_best_pc",
                    "arousal_r", "n_rated_emotions", "rsa_adjacent_layers_mean", "baselines"],
    "04_steering": ["usable_alpha_max"],
    "05_behavior": ["elo_probe_r", "elo_steering_shift", "probe_vs_steering_r", "unethical_rate",
                    "unethical_rate_baseline", "readout_accuracy"],
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
    assert set(metrics["baselines"]) == {"input_embeddings", "sentence_embeddings", "shuffled_labels"}


def test_run_folder_has_vectors_and_figures(quick_run):
    assert (quick_run / "vectors.safetensors").is_file() and (quick_run / "vectors.json").is_file()
    figs = {p.stem for p in (quick_run / "figures").glob("*.png")}
    assert {"residual_norms", "validation_by_layer", "heldout_by_layer", "pc_map_family", "alpha_sweep",
            "ethics_dose_response"} <= figs


def test_rerun_with_unchanged_inputs_reuses_every_chapter(quick_run, capsys):
    before = {p.name: p.read_bytes() for p in quick_run.glob("*.ipynb")}
    capsys.readouterr()
    again = run_chapters("gemma-3-270m", quick=True, out=quick_run.parent, device="cpu")
    err = capsys.readouterr().err
    assert again == quick_run
    for ch in CHAPTERS:
        assert f"reusing {ch.name}" in err, ch.name
    assert {p.name: p.read_bytes() for p in quick_run.glob("*.ipynb")} == before
