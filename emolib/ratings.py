"""Human affect ratings for the study's emotions (Warriner, Kuperman & Brysbaert, 2013).

The CSV ships unmodified in ``data/``; subsets are derived here at run time. 126 of the 171
emotions are lemmas of the norms. For the others, :data:`LEMMA_MAP` names a lemma we judge to
carry the same affect (a participle's verb, an adjective's noun, the core of a compound); an
emotion whose only candidates would change the meaning (``rattled`` -> the noise "rattle",
``resigned`` -> quitting a job) is left out and counted in :func:`rating_coverage`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from emolib.data import DATA_DIR, emotion_list

__all__ = ["WARRINER_CSV", "LEMMA_MAP", "EXCLUDED", "Ratings", "load_ratings", "rating_coverage"]

WARRINER_CSV = "Ratings_Warriner_et_al.csv"

# emotion -> Warriner lemma judged equivalent in valence and arousal (why, where not obvious).
LEMMA_MAP: dict[str, str] = {
    "alarmed": "alarm",
    "awestruck": "awe",
    "contemptuous": "contempt",
    "disturbed": "disturb",
    "empathetic": "empathy",
    "energized": "energize",
    "fulfilled": "fulfill",
    "grief-stricken": "grief",
    "horrified": "horror",          # the emotion noun
    "humiliated": "humiliate",
    "insulted": "insult",
    "irritated": "irritate",
    "loving": "love",
    "offended": "offend",
    "panicked": "panic",
    "perplexed": "confused",        # synonym; no form of "perplex" is rated
    "refreshed": "refresh",
    "relieved": "relief",
    "remorseful": "remorse",
    "self-confident": "confident",   # "self-" adds no affect the core lacks
    "shocked": "shock",
    "stimulated": "stimulate",
    "stressed": "stress",
    "thrilled": "thrill",
    "tormented": "torment",
    "trapped": "trap",
    "dumbstruck": "stun",           # stunned speechless; no form of "dumbstruck" is rated
    "dispirited": "discouraged",    # synonym; no form of "dispirit" is rated
}

# Left out on purpose: the nearest lemma has another meaning.
EXCLUDED: dict[str, str] = {
    "at ease": "'ease' rates the noun (effortlessness), not the relaxed state",
    "on edge": "'edge' is a physical edge",
    "rattled": "'rattle' is a noise or a toy",
    "resigned": "'resign' means quitting a job",
    "self-conscious": "'conscious' means awake or aware",
    "self-critical": "'critical' also means severe or crucial",
    "shaken": "'shake' is a movement",
    "stuck": "'stick' is a piece of wood or to adhere",
    "worn out": "'worn' describes objects",
    "exasperated": "no form of it is rated",
    "exuberant": "no form of it is rated",
    "invigorated": "no form of it is rated",
    "jubilant": "no form of it is rated",
    "mortified": "no form is rated; 'embarrass' would understate its intensity",
    "rejuvenated": "no form of it is rated",
    "unnerved": "no form of it is rated",
    "unsettled": "no form of it is rated",
}


@dataclass(frozen=True)
class Ratings:
    """Valence, arousal and dominance (1-9) for the emotions that map to a lemma."""

    table: pd.DataFrame  # index: emotion; columns: lemma, valence, arousal, dominance, mapped
    unmapped: tuple[str, ...]

    @property
    def emotions(self) -> list[str]:
        return list(self.table.index)


def load_ratings(emotions: list[str] | None = None, *, data_dir: Path = DATA_DIR) -> Ratings:
    """Ratings for ``emotions`` (default all 171), in their order; unmapped ones are listed apart."""
    emotions = emotion_list(data_dir) if emotions is None else list(emotions)
    df = pd.read_csv(data_dir / WARRINER_CSV, keep_default_na=False, low_memory=False)
    df = df.set_index("Word")[["V.Mean.Sum", "A.Mean.Sum", "D.Mean.Sum"]]
    rows, unmapped = [], []
    for e in emotions:
        lemma = e if e in df.index else LEMMA_MAP.get(e)
        if lemma is None or lemma not in df.index:
            unmapped.append(e)
            continue
        v, a, d = df.loc[lemma]
        rows.append({"emotion": e, "lemma": lemma, "valence": float(v), "arousal": float(a),
                     "dominance": float(d), "mapped": lemma != e})
    table = pd.DataFrame(rows).set_index("emotion") if rows else pd.DataFrame(
        columns=["lemma", "valence", "arousal", "dominance", "mapped"])
    return Ratings(table=table, unmapped=tuple(unmapped))


def rating_coverage(data_dir: Path = DATA_DIR) -> dict:
    r = load_ratings(data_dir=data_dir)
    return {"n_emotions": len(r.table) + len(r.unmapped), "n_direct": int((~r.table["mapped"]).sum()),
            "n_mapped": int(r.table["mapped"].sum()), "n_unmapped": len(r.unmapped), "unmapped": list(r.unmapped)}
