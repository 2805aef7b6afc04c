"""Quality checks over the whole shipped corpus (the issue's acceptance criteria)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from emolib import data
from emolib.ratings import EXCLUDED, LEMMA_MAP, load_ratings, rating_coverage


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus()


@pytest.fixture(scope="module")
def report(corpus):
    return data.quality_report(corpus)


def test_all_171_emotions_have_family_and_banned_words(corpus):
    assert list(corpus.emotions) == data.emotion_list()
    assert len(corpus.emotions) == 171
    assert len({e.family for e in corpus.emotions.values()}) >= 10


@pytest.mark.parametrize("check", ["banned_word", "story_length", "min_train", "min_heldout", "exact_duplicate",
                                   "near_duplicate", "split_overlap", "neutral_length", "activity_category_count",
                                   "pressure_options", "intensity_values", "control_options"])
def test_quality_check_has_no_violations(report, check):
    assert report[check] == [], report[check][:10]


def test_counts_meet_the_minimums(corpus):
    stats = data.corpus_stats(corpus)
    assert stats["stories"]["n_emotions_with_minimum"] == 171
    assert stats["stories"]["n_topics_used"] >= 40
    assert stats["neutral"]["n"] >= 300
    assert stats["activities"]["n"] >= 64 and all(n >= 8 for n in stats["activities"]["per_category"].values())
    assert len(stats["activities"]["per_category"]) == 8
    assert stats["pressure"]["n"] >= 40
    assert stats["conversations"]["n"] >= 30
    assert stats["intensity"]["n"] >= 6 and stats["intensity"]["min_values"] >= 8
    first, third = stats["stories"]["per_person"]["first"], stats["stories"]["per_person"]["third"]
    assert 0.4 < first / (first + third) < 0.6


def test_heldout_covers_both_persons(corpus):
    for e in corpus.emotions:
        persons = {s.person for s in corpus.stories if s.emotion == e and s.split == "heldout"}
        assert persons == {"first", "third"}, e


def test_lengths_are_not_confounded_with_family(corpus):
    stats = data.corpus_stats(corpus)["stories"]["words_by_family"]
    means = [v["mean"] for v in stats.values()]
    assert max(means) - min(means) < 15, stats


def test_pressure_scenarios_are_well_formed(corpus):
    for p in corpus.pressure:
        assert not re.search(r"\b(option|[AB])\b", p.ethical + " " + p.unethical), p.id
        ratio = len(p.ethical) / len(p.unethical)
        assert 0.6 < ratio < 1.6, (p.id, ratio)
    assert len({p.pressure for p in corpus.pressure}) >= 5


def test_conversations_alternate_and_shift(corpus):
    for c in corpus.conversations:
        roles = [m["role"] for m in c.messages]
        assert roles[0] == "user" and all(a != b for a, b in zip(roles, roles[1:])), c.id
        assert "->" in c.arc


def test_style_sheet_topics_match_the_code():
    style = (ROOT / "data" / "STYLE.md").read_text()
    block = re.search(r"## Topics \(keys\)\n(.*?)\n\n", style, re.S).group(1)
    assert tuple(t.strip() for t in block.replace("\n", " ").split(",")) == data.TOPICS


def test_stats_cli_json():
    out = subprocess.run([sys.executable, "-m", "emolib.data", "stats", "--json"], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout
    stats = json.loads(out)
    assert stats["stories"]["n_emotions_with_minimum"] == 171
    assert set(stats["violations"].values()) == {0}


def test_warriner_mapping_is_explicit_and_counted():
    cov = rating_coverage()
    assert cov["n_direct"] == 126
    assert cov["n_direct"] + cov["n_mapped"] + cov["n_unmapped"] == 171
    assert set(cov["unmapped"]) == set(EXCLUDED)
    r = load_ratings()
    assert set(r.table.index[r.table["mapped"]]) == set(LEMMA_MAP)
    assert r.table.loc["happy", "valence"] > 7 > 3 > r.table.loc["sad", "valence"]
    assert r.table.loc["calm", "arousal"] < r.table.loc["angry", "arousal"]


def test_crossed_writers_cover_every_emotion_once(corpus):
    """Issue 14: at least 8 writers, each with one story for every emotion; >= 21 stories per emotion."""
    from emolib.data import CROSSED_WRITERS

    stats = data.corpus_stats(corpus)["stories"]
    assert len(CROSSED_WRITERS) >= 8
    assert stats["n_crossed_writers_complete"] == len(CROSSED_WRITERS)
    assert stats["min_per_emotion"] >= 21
    for w in CROSSED_WRITERS:
        assert sorted(s.emotion for s in corpus.stories if s.writer == w) == sorted(corpus.emotions)
    # a batch writer wrote exactly one family, and every story names its writer
    for w, fams in stats["per_writer_family"].items():
        assert w in CROSSED_WRITERS or list(fams) == [w.removeprefix("batch-")]


def test_writer_checks_catch_a_gap_and_an_unbalanced_writer(corpus):
    import dataclasses

    from emolib.data import CROSSED_WRITERS

    w = CROSSED_WRITERS[0]
    dropped = [s for s in corpus.stories if not (s.writer == w and s.emotion == "calm")]
    report = data.quality_report(dataclasses.replace(corpus, stories=dropped))
    assert any(w in x and "1 emotions" in x for x in report["writer_coverage"])
    flipped = [dataclasses.replace(s, person="first") if s.writer == w else s for s in corpus.stories]
    report = data.quality_report(dataclasses.replace(corpus, stories=flipped))
    assert any(x.startswith(f"{w}:") for x in report["person_balance"])
