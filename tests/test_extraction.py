"""Extraction, denoising, validation and vector files on synthetic data with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from emolib.extraction import extract, mean_difference, neutral_components, project_out
from emolib.validation import choose_layer, classification_by_layer, intensity_spearman
from emolib.vectors import EmotionVectors, VectorFileError

E, D, PER = 6, 32, 40
EMOTIONS = [f"emo{i}" for i in range(E)]


def planted(seed=0, nuisance_scale=0.0):
    """Activations [n, 2, D]: layer 0 is noise only, layer 1 carries a planted direction per emotion.

    With ``nuisance_scale``, every text also moves along a nuisance axis by a random amount, and
    each emotion has a different mean offset along it (a topic-like confound).
    """
    basis = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(1234)))[0]
    dirs, nuisance = basis[:, :E].T, basis[:, E]  # orthonormal [E, D], and an axis orthogonal to them
    g = torch.Generator().manual_seed(seed)  # the seed changes the noise, never the directions
    labels, rows = [], []
    for e in range(E):
        for _ in range(PER):
            noise = 0.3 * torch.randn(D, generator=g)
            x1 = 2.0 * dirs[e] + noise + nuisance * nuisance_scale * (torch.randn(1, generator=g) + e)
            rows.append(torch.stack([torch.randn(D, generator=g), x1]))
            labels.append(EMOTIONS[e])
    neutral = torch.stack([torch.stack([torch.randn(D, generator=g), 0.3 * torch.randn(D, generator=g)
                                        + nuisance * nuisance_scale * 3 * torch.randn(1, generator=g)])
                           for _ in range(200)])
    return torch.stack(rows), labels, dirs, nuisance, neutral


def cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def test_planted_directions_are_recovered():
    acts, labels, dirs, _, _ = planted()
    vecs, center = mean_difference(acts, labels, EMOTIONS)
    assert vecs.shape == (2, E, D) and center.shape == (2, D)
    for e in range(E):
        # mean-difference = dir_e - mean(dirs); compare with that expectation
        expected = dirs[e] - dirs.mean(0)
        assert cos(vecs[1, e], expected) > 0.95
    assert torch.allclose(vecs[1].sum(0), torch.zeros(D), atol=1e-4), "vectors are centred"


def test_denoising_removes_a_confounded_nuisance_axis():
    acts, labels, dirs, nuisance, neutral = planted(nuisance_scale=3.0)
    raw, _ = mean_difference(acts, labels, EMOTIONS)
    comps = neutral_components(neutral, variance=0.5)
    assert len(comps[1]) >= 1 and abs(float(comps[1][0] @ nuisance)) > 0.95
    clean = project_out(raw, comps)
    raw_nuis = np.mean([abs(cos(raw[1, e], nuisance)) for e in range(E)])
    clean_nuis = np.mean([abs(cos(clean[1, e], nuisance)) for e in range(E)])
    assert raw_nuis > 0.5 and clean_nuis < 0.05
    for e in range(E):
        assert cos(clean[1, e], dirs[e] - dirs.mean(0)) > 0.9


def test_neutral_components_variance_rules():
    _, _, _, _, neutral = planted(nuisance_scale=3.0)
    assert [len(c) for c in neutral_components(neutral, variance=0.0)] == [0, 0]
    few, many = neutral_components(neutral, variance=0.3), neutral_components(neutral, variance=0.9)
    assert len(few[0]) < len(many[0])
    u = many[0]
    torch.testing.assert_close(u @ u.T, torch.eye(len(u)), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="variance"):
        neutral_components(neutral, variance=1.0)


def test_classification_finds_the_informative_layer_and_chance_elsewhere():
    acts, labels, *_ = planted()
    test_acts, test_labels, *_ = planted(seed=1)
    vecs = extract(acts, labels, EMOTIONS, layers=[3, 7], model="synthetic")
    table = classification_by_layer(vecs, test_acts, test_labels)
    by = table.set_index("layer")
    assert by.loc[7, "top1"] > 0.95 and by.loc[7, "top1_lo"] > 0.9
    assert by.loc[3, "top1"] < 0.4  # noise layer: near chance (1/6)
    assert by.loc[3, "top1_lo"] <= 1 / E <= by.loc[3, "top1_hi"] + 0.1
    assert choose_layer(table) == 7


def test_logistic_probe_alternative_also_classifies():
    acts, labels, *_ = planted()
    test_acts, test_labels, *_ = planted(seed=2)
    vecs = extract(acts, labels, EMOTIONS, layers=[0, 1], model="synthetic", method="logistic-probe")
    table = classification_by_layer(vecs, test_acts, test_labels)
    assert table.set_index("layer").loc[1, "top1"] > 0.9


def test_save_load_round_trip_and_errors(tmp_path, tiny_model):
    acts, labels, _, _, neutral = planted(nuisance_scale=1.0)
    vecs = extract(acts, labels, EMOTIONS, layers=[0, 1], model="synthetic", neutral_acts=neutral,
                   data_hash="abc123")
    base = vecs.save(tmp_path / "vectors")
    back = EmotionVectors.load(base)
    assert back.emotions == EMOTIONS and back.layers == [0, 1] and back.data_hash == "abc123"
    torch.testing.assert_close(back.vectors, vecs.vectors)
    torch.testing.assert_close(back.center, vecs.center)
    meta = json.loads((tmp_path / "vectors.json").read_text())
    assert meta["model"] == "synthetic" and meta["method"] == "mean-diff" and "torch" in meta["versions"]
    assert meta["denoise"]["variance"] == 0.5
    # D = 32 = the tiny model's width: accepted; another width: a clear error.
    EmotionVectors.load(base, model=tiny_model)
    wide = EmotionVectors(EMOTIONS, [0], torch.zeros(1, E, 64), torch.zeros(1, 64), "other", "mean-diff")
    wide.save(tmp_path / "wide")
    with pytest.raises(VectorFileError, match="d_model 64.*d_model 32"):
        EmotionVectors.load(tmp_path / "wide", model=tiny_model)
    # Corruption of either file is detected.
    (tmp_path / "vectors.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(VectorFileError, match="corrupted"):
        EmotionVectors.load(base)
    (tmp_path / "wide.json").write_text("{broken")
    with pytest.raises(VectorFileError, match="not valid JSON"):
        EmotionVectors.load(tmp_path / "wide")
    with pytest.raises(VectorFileError, match="does not exist"):
        EmotionVectors.load(tmp_path / "nothing")


def test_bad_extraction_input():
    acts, labels, *_ = planted()
    with pytest.raises(ValueError, match="not among the emotions"):
        mean_difference(acts, labels[:-1] + ["nope"], EMOTIONS)
    with pytest.raises(ValueError, match="no examples"):
        mean_difference(acts, labels, EMOTIONS + ["unused"])
    with pytest.raises(ValueError, match="one label per row"):
        mean_difference(acts, labels[:-1], EMOTIONS)
    with pytest.raises(ValueError, match="unknown method"):
        extract(acts, labels, EMOTIONS, layers=[0, 1], model="m", method="pca")
    with pytest.raises(ValueError, match="n_layers=2"):
        EmotionVectors(EMOTIONS, [0, 1], torch.zeros(3, E, D), torch.zeros(3, D), "m", "mean-diff")


def test_intensity_spearman_signs():
    values = [1, 2, 4, 8, 16, 32, 64, 128]
    up = intensity_spearman(values, np.arange(8) + 0.01 * np.random.default_rng(0).standard_normal(8))
    assert up["rho"] > 0.95 and up["p"] < 0.01
    flat = intensity_spearman(values, np.random.default_rng(1).standard_normal(8))
    assert flat["p"] > 0.05 or abs(flat["rho"]) < 0.8
