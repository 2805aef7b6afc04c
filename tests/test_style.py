"""The corpus's style audit: covariates measured right, a planted confound caught, the real corpus clean."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from emolib import style
from emolib.data import Story, emotion_list, load_stories
from emolib.ratings import load_ratings


def story(i: int, emotion: str, text: str, *, person: str = "third", writer: str = "w1") -> Story:
    return Story(id=f"s-{i}", emotion=emotion, split="train", writer=writer, topic="commute", person=person, text=text)


def test_covariates_count_what_they_document():
    s = story(0, "calm", 'Her hands were warm. "Tea?" he asked, and she nodded, her shoulders loose.', person="first")
    row = style.story_style([s]).iloc[0]
    assert row.first_person == 1.0 and row.dialogue == 1.0 and row.words == 13
    # hands, warm, shoulders: 3 bodily/sensory words in 13
    assert np.isclose(row.bodily, 100 * 3 / 13)
    plain = style.story_style([story(1, "calm", "The report was filed on Tuesday after the meeting ended.")]).iloc[0]
    assert plain.bodily == 0 and plain.dialogue == 0 and plain.first_person == 0


def test_planted_confound_is_flagged_and_shuffled_is_not():
    rng = np.random.default_rng(0)
    emotions = [f"e{i}" for i in range(60)]
    valence = rng.normal(5, 2, len(emotions))
    ratings = pd.DataFrame({"valence": valence, "arousal": rng.normal(5, 2, len(emotions))}, index=emotions)
    filler = "word " * 60
    # longer stories for more pleasant emotions: a planted words ~ valence confound
    planted = [story(i, e, filler + "word " * int(4 * v)) for i, (e, v) in enumerate(zip(emotions, valence))]
    audit = style.style_audit(planted, ratings)
    assert any(c.startswith("words ~ valence") for c in style.style_confounds(audit))
    shuffled = [dataclasses.replace(s, emotion=e) for s, e in zip(planted, rng.permutation(emotions))]
    audit = style.style_audit(shuffled, ratings)
    r = audit[(audit.stories == "all") & (audit.covariate == "words")].valence_r.item()
    assert abs(r) < 0.4


def test_real_corpus_passes_the_style_audit():
    """Issue 14: no covariate correlates with human valence or arousal at |r| > 0.4 in the full corpus."""
    stories = load_stories()
    ratings = load_ratings(emotion_list()).table
    audit = style.style_audit(stories, ratings)
    assert set(audit.stories) == {"old", "new", "all"}
    assert len(audit[audit.stories == "all"]) == len(style.COVARIATES)
    assert style.style_confounds(audit, stories="all") == [], audit.round(2).to_string()
