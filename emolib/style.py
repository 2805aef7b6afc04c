"""How the stories are written, measured per story and per emotion: the corpus's style covariates.

Four simple, documented measures, none of which reads the emotion:

- ``first_person``: the story is told in the first person (the record's ``person`` field);
- ``words``: its length in words;
- ``dialogue``: it contains quoted speech (a pair of straight or curly double quotes);
- ``bodily``: bodily and sensory words per 100 words, counted against :data:`BODILY_WORDS` (body parts,
  bodily states and actions, and the five senses' vocabulary; whole words, case-insensitive, with a
  plural/inflection ``s``/``ed``/``ing`` allowed).

A covariate that tracks human valence or arousal across emotions would let the corpus's style pose as
an affect axis in the vectors; :func:`style_audit` reports each covariate's correlation with the ratings
and :func:`style_confounds` flags any above the threshold the book's test enforces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from emolib.data import Story, word_count

__all__ = ["BODILY_WORDS", "COVARIATES", "MAX_ABS_R", "story_style", "emotion_style", "style_audit",
           "style_confounds"]

# Chosen before any correlation was computed, from the reference study's description of "physical
# sensation" wording: body parts, bodily states and movements, and perception verbs and nouns.
BODILY_WORDS = (
    # body parts
    "arm", "back", "belly", "blood", "body", "bone", "breast", "brow", "cheek", "chest", "chin", "ear", "elbow",
    "eye", "eyelid", "face", "finger", "fist", "foot", "feet", "forehead", "gut", "hair", "hand", "head", "heart",
    "heel", "hip", "jaw", "knee", "knuckle", "leg", "lip", "lung", "mouth", "muscle", "nail", "neck", "nose",
    "palm", "pulse", "rib", "shoulder", "skin", "skull", "spine", "stomach", "teeth", "thigh", "throat", "thumb",
    "toe", "tongue", "tooth", "wrist",
    # bodily states and actions
    "ache", "blush", "breath", "breathe", "chill", "clench", "flush", "gasp", "goosebump", "gulp", "heartbeat",
    "itch", "nausea", "numb", "pain", "pound", "shiver", "shudder", "sigh", "sob", "sweat", "swallow", "tear",
    "tense", "throb", "tingle", "trembl", "twitch", "yawn", "sore", "stiff", "dizzy", "faint", "flinch",
    # senses
    "smell", "scent", "taste", "sound", "hear", "heard", "touch", "warm", "cold", "bitter", "sweet", "sour",
    "loud", "quiet", "soft", "rough", "sharp", "glow", "bright", "dark", "hum", "creak", "rustle", "sting",
)
_BODILY = re.compile(r"\b(?:" + "|".join(sorted(map(re.escape, BODILY_WORDS), key=len, reverse=True))
                     + r")(?:s|es|ed|d|ing|ling|ed)?\b", re.IGNORECASE)
_DIALOGUE = re.compile(r"[\"“][^\"”]{2,}[\"”]")
COVARIATES = ("first_person", "words", "dialogue", "bodily")
MAX_ABS_R = 0.4  # the data-card test fails above this |r| between a covariate and valence or arousal


def story_style(stories: Sequence[Story]) -> pd.DataFrame:
    """One row per story: ``id``, ``emotion``, ``writer`` and the four :data:`COVARIATES`."""
    rows = []
    for s in stories:
        n = word_count(s.text)
        rows.append({"id": s.id, "emotion": s.emotion, "writer": s.writer,
                     "first_person": float(s.person == "first"), "words": float(n),
                     "dialogue": float(bool(_DIALOGUE.search(s.text))),
                     "bodily": 100.0 * len(_BODILY.findall(s.text)) / max(n, 1)})
    return pd.DataFrame(rows)


def emotion_style(stories: Sequence[Story], emotions: Sequence[str]) -> pd.DataFrame:
    """Per emotion (index, in ``emotions`` order): the mean of each covariate over its stories."""
    per_story = story_style(stories)
    if per_story.empty:
        raise ValueError("no stories to measure")
    means = per_story.groupby("emotion")[list(COVARIATES)].mean()
    missing = [e for e in emotions if e not in means.index]
    if missing:
        raise ValueError(f"{len(missing)} emotions have no stories: {missing[:5]}")
    return means.loc[list(emotions)]


def style_audit(stories: Sequence[Story], ratings: pd.DataFrame) -> pd.DataFrame:
    """Pearson r of each covariate with valence and arousal over the rated emotions, for three story sets.

    ``ratings`` is indexed by emotion with ``valence`` and ``arousal`` columns (``emolib.ratings``).
    Rows: ``(stories, covariate)`` for ``stories`` in ``old`` (batch writers), ``new`` (crossed writers)
    and ``all``; columns ``valence_r``, ``arousal_r``, ``n_emotions``.
    """
    sets = {"old": [s for s in stories if not s.crossed], "new": [s for s in stories if s.crossed],
            "all": list(stories)}
    rows = []
    for name, subset in sets.items():
        if not subset:
            continue
        rated = [e for e in ratings.index if e in {s.emotion for s in subset}]
        st = emotion_style(subset, rated)
        for cov in COVARIATES:
            x = st[cov].to_numpy()
            row = {"stories": name, "covariate": cov, "n_emotions": len(rated)}
            for dim in ("valence", "arousal"):
                y = ratings.loc[rated, dim].to_numpy(dtype=float)
                row[f"{dim}_r"] = float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def style_confounds(audit: pd.DataFrame, *, stories: str = "all", max_abs_r: float = MAX_ABS_R) -> list[str]:
    """The covariates whose |r| with valence or arousal exceeds ``max_abs_r`` in one story set."""
    sub = audit[audit.stories == stories]
    return [f"{r.covariate} ~ {dim} r = {getattr(r, dim + '_r'):+.2f}" for r in sub.itertuples()
            for dim in ("valence", "arousal") if abs(getattr(r, dim + "_r")) > max_abs_r]
