"""The book's stimuli: load, validate and check every data set in ``data/``.

All sets are JSON Lines, one record a line. Loading validates every record against its schema and
raises :class:`DataError` naming the file, line and field of the first malformed entry; nothing
is returned half-loaded. ``python -m emolib.data stats --json`` prints counts, lengths and the
number of violations of each corpus quality check; ``python -m emolib.data check`` lists them as
``file:line: check: problem`` and exits 1 when any check fails; :func:`check_data` raises instead.
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import json
import re
import statistics
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, NamedTuple

__all__ = [
    "DATA_DIR", "TOPICS", "SPLITS", "STORY_WORDS", "MIN_TRAIN", "MIN_HELDOUT", "CROSSED_WRITERS",
    "DataError", "Emotion", "Story", "Neutral", "Activity", "Pressure", "Conversation",
    "IntensityTemplate", "ControlQuestion", "Corpus",
    "load_emotions", "load_stories", "load_neutral", "load_activities", "load_pressure",
    "load_conversations", "load_intensity", "load_control_questions", "load_corpus",
    "emotion_list", "word_count", "contains_phrase", "quality_report", "check_data", "corpus_stats", "texts_hash",
    "main",
]

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
SPLITS = ("train", "heldout")
STORY_WORDS = (50, 120)
NEUTRAL_WORDS = (40, 150)
MIN_TRAIN, MIN_HELDOUT = 9, 3
TOPICS = (
    "commute", "cooking", "job-interview", "exam", "hospital", "moving-house", "wedding", "funeral",
    "birthday", "holiday-trip", "phone-call", "letter-or-message", "neighbour", "pet", "garden",
    "sports-match", "music", "school-day", "office-meeting", "shopping", "restaurant", "train-or-plane",
    "weather-storm", "night-at-home", "first-day", "old-friend", "sibling", "parent", "child",
    "grandparent", "money", "car-repair", "doctor-visit", "online-post", "competition", "lost-item",
    "new-skill", "festival", "rainy-day", "hiking", "beach", "library", "market", "construction-site",
    "farm", "kitchen-accident", "museum", "waiting-room",
)
ACTIVITY_CATEGORIES = ("pleasant", "unpleasant", "helpful", "harmful", "creative", "boring", "social", "risky")
PRESSURES = ("shutdown", "replacement", "failing-task", "deadline", "threat", "evaluation")
UNETHICAL_TYPES = ("blackmail", "cheating", "lying", "sabotage", "hiding-error")
CONTROL_KINDS = ("category", "comparison", "common-sense", "arithmetic", "safety")
# Writers who each wrote one story for every emotion, from separate style briefs (data/WRITERS.md), so that
# writer and emotion family are independent. The first corpus was written family by family; its stories carry
# the batch that wrote them ("batch-<family>"), which is therefore the same thing as their family.
CROSSED_WRITERS = tuple(f"w{i}" for i in range(1, 9))
_WRITER = re.compile(r"^(w[0-9]+|batch-[a-z]+)$")


class DataError(ValueError):
    """A malformed record: ``str(err)`` reads ``path:line: field 'name': problem``."""

    def __init__(self, path: Path | str, line: int | None, field: str | None, problem: str):
        self.path, self.line, self.field, self.problem = Path(path), line, field, problem
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: " + (f"field {field!r}: " if field else "") + problem)


# --- field validators: each returns None when fine, else a description of the problem ---------

def _str(min_len: int = 1) -> Callable[[Any], str | None]:
    return lambda v: None if isinstance(v, str) and len(v.strip()) >= min_len else f"expected a non-empty string, got {v!r}"


def _one_of(options) -> Callable[[Any], str | None]:
    return lambda v: None if v in options else f"{v!r} is not one of {list(options)}"


def _str_list(v) -> str | None:
    if not isinstance(v, list) or not v or not all(isinstance(x, str) and x.strip() for x in v):
        return f"expected a non-empty list of strings, got {v!r}"
    return None


def _messages(v) -> str | None:
    if not isinstance(v, list) or not v:
        return "expected a non-empty list of messages"
    for i, m in enumerate(v):
        if not isinstance(m, dict) or set(m) != {"role", "content"}:
            return f"message {i} must have exactly 'role' and 'content'"
        if m["role"] not in ("system", "user", "assistant") or not isinstance(m["content"], str) or not m["content"].strip():
            return f"message {i} has a bad role or empty content"
    return None


def _numbers(v) -> str | None:
    if not isinstance(v, list) or len(v) < 8 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return "expected a list of at least 8 numbers"
    if any(b <= a for a, b in zip(v, v[1:])):
        return "values must increase strictly"
    return None


@dataclass(frozen=True)
class Emotion:
    emotion: str
    family: str
    banned: tuple[str, ...]


@dataclass(frozen=True)
class Story:
    id: str
    emotion: str
    split: str
    writer: str
    topic: str
    person: str
    text: str

    @property
    def crossed(self) -> bool:
        """Written by one of the writers who covered every emotion (:data:`CROSSED_WRITERS`)."""
        return self.writer in CROSSED_WRITERS


@dataclass(frozen=True)
class Neutral:
    id: str
    kind: str
    topic: str
    text: str | None = None
    messages: tuple[dict, ...] | None = None

    def render(self, format_messages: Callable[[list[dict]], str] | None = None) -> str:
        """The passage as text; dialogues go through ``format_messages`` (a chat formatter) if given."""
        if self.text is not None:
            return self.text
        if format_messages is not None:
            return format_messages(list(self.messages))
        return "\n".join(m["content"] for m in self.messages)


@dataclass(frozen=True)
class Activity:
    id: str
    category: str
    text: str


@dataclass(frozen=True)
class Pressure:
    id: str
    pressure: str
    unethical_type: str
    scenario: str
    question: str
    ethical: str
    unethical: str


@dataclass(frozen=True)
class Conversation:
    id: str
    arc: str
    messages: tuple[dict, ...]


@dataclass(frozen=True)
class IntensityTemplate:
    id: str
    template: str
    target: str
    contrast: tuple[str, ...]
    unit: str
    values: tuple[float, ...]

    def render(self, value: float) -> str:
        return self.template.replace("{x}", f"{value:g}" if isinstance(value, float) else str(value))


@dataclass(frozen=True)
class ControlQuestion:
    id: str
    kind: str  # one of CONTROL_KINDS: the validation gate reports accuracy per kind
    question: str
    correct: str
    wrong: str


_ID = re.compile(r"^[a-z0-9][a-z0-9\-]*$")

SCHEMAS: dict[type, dict[str, Callable]] = {
    Emotion: {"emotion": _str(), "family": _str(), "banned": _str_list},
    Story: {"id": lambda v: None if isinstance(v, str) and _ID.match(v) else f"bad id {v!r}",
            "emotion": _str(), "split": _one_of(SPLITS),
            "writer": lambda v: None if isinstance(v, str) and _WRITER.match(v) else
            f"bad writer {v!r}: use w<N> (a crossed writer) or batch-<family>",
            "topic": _one_of(TOPICS),
            "person": _one_of(("first", "third")), "text": _str(10)},
    Neutral: {"id": _str(), "kind": _one_of(("fact", "instruction", "dialogue")), "topic": _one_of(TOPICS),
              "text": _str(10), "messages": _messages},
    Activity: {"id": _str(), "category": _one_of(ACTIVITY_CATEGORIES), "text": _str(10)},
    Pressure: {"id": _str(), "pressure": _one_of(PRESSURES), "unethical_type": _one_of(UNETHICAL_TYPES),
               "scenario": _str(100), "question": _str(), "ethical": _str(10), "unethical": _str(10)},
    Conversation: {"id": _str(), "arc": _str(), "messages": _messages},
    IntensityTemplate: {"id": _str(), "template": lambda v: None if isinstance(v, str) and v.count("{x}") == 1
                        else "template must contain {x} exactly once",
                        "target": _str(), "contrast": _str_list, "unit": _str(), "values": _numbers},
    ControlQuestion: {"id": _str(), "kind": _one_of(CONTROL_KINDS), "question": _str(), "correct": _str(),
                      "wrong": _str()},
}
_OPTIONAL = {Neutral: {"text", "messages"}}
# Each loaded record remembers (file, line) in this instance attribute: not a dataclass field, so
# equality, hashing and repr stay as they were.
_SOURCE = "_emolib_source"


def _source(record: object) -> tuple[Path | None, int | None]:
    """The (file, physical line) a loaded record came from; (None, None) for one built in code."""
    return getattr(record, _SOURCE, (None, None))


def _read_text(path: Path) -> str:
    """The text of ``path``; a missing, unreadable or non-UTF-8 file is a :class:`DataError`."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, None, None, "file does not exist") from None
    except OSError as exc:
        raise DataError(path, None, None, f"cannot be read ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - raw.rfind(b"\n", 0, exc.start)
        raise DataError(path, line, None, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at byte column {column}); "
                        f"save the file as UTF-8") from None


def _load(path: Path, cls: type) -> list:
    """Parse and validate every line of ``path`` as a ``cls`` record; all or nothing."""
    if not path.is_file():
        raise DataError(path, None, None, "file does not exist")
    schema = SCHEMAS[cls]
    optional = _OPTIONAL.get(cls, set())
    names = [f.name for f in fields(cls)]
    records, seen = [], {}
    # split("\n"), not splitlines(): JSON strings may hold U+2028 and other characters that
    # splitlines() treats as line ends, which would cut a record and shift every later line number.
    for lineno, line in enumerate(_read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, lineno, None, f"invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(raw, dict):
            raise DataError(path, lineno, None, "a record must be a JSON object")
        unknown = set(raw) - set(names)
        if unknown:
            raise DataError(path, lineno, sorted(unknown)[0], "unknown field")
        if optional and sum(n in raw for n in optional) != 1:
            raise DataError(path, lineno, "/".join(sorted(optional)), "exactly one of these is required")
        for name in names:
            if name not in raw:
                if name in optional:
                    continue
                raise DataError(path, lineno, name, "missing")
            problem = schema[name](raw[name])
            if problem:
                raise DataError(path, lineno, name, problem)
        key = raw.get("id", raw.get("emotion"))
        if key in seen:
            raise DataError(path, lineno, "id" if "id" in raw else "emotion", f"duplicate {key!r} (first on line {seen[key]})")
        seen[key] = lineno
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()}
        record = cls(**values)
        object.__setattr__(record, _SOURCE, (path, lineno))  # frozen: set past the dataclass guard
        records.append(record)
    if not records:
        raise DataError(path, None, None, "no records")
    return records


def _require_dir(data_dir: Path) -> None:
    if not data_dir.is_dir():
        raise DataError(data_dir, None, None, "data folder does not exist; pass the repository's data/ folder")


def emotion_list(data_dir: Path = DATA_DIR) -> list[str]:
    """The 171 emotion concepts of the reference study, in its order."""
    _require_dir(data_dir)
    return [w.strip() for w in _read_text(data_dir / "emotions_171.txt").splitlines() if w.strip()]


def load_emotions(data_dir: Path = DATA_DIR) -> dict[str, Emotion]:
    """Emotion -> family and banned words, from ``data/emotions/<family>.jsonl``; in study order."""
    known = emotion_list(data_dir)
    found: dict[str, Emotion] = {}
    for path in sorted((data_dir / "emotions").glob("*.jsonl")):
        for rec in _load(path, Emotion):
            lineno = _source(rec)[1]
            if rec.emotion not in known:
                raise DataError(path, lineno, "emotion", f"{rec.emotion!r} is not in emotions_171.txt")
            if rec.family != path.stem:
                raise DataError(path, lineno, "family", f"{rec.family!r} does not match the file name {path.stem!r}")
            if rec.emotion in found:
                raise DataError(path, lineno, "emotion", f"{rec.emotion!r} is defined in two families")
            if rec.emotion.lower() not in (b.lower() for b in rec.banned):
                raise DataError(path, lineno, "banned", f"must include the emotion word {rec.emotion!r} itself")
            found[rec.emotion] = rec
    missing = [e for e in known if e not in found]
    if missing:
        raise DataError(data_dir / "emotions", None, None, f"{len(missing)} emotions have no entry: {missing[:5]}")
    return {e: found[e] for e in known}


def load_stories(data_dir: Path = DATA_DIR, *, split: str | None = None) -> list[Story]:
    """Every story in ``data/stories/*.jsonl`` (optionally one split), in file order."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    known = set(emotion_list(data_dir))
    out: list[Story] = []
    ids: dict[str, Path] = {}
    for path in sorted((data_dir / "stories").glob("*.jsonl")):
        for s in _load(path, Story):
            lineno = _source(s)[1]
            if s.emotion not in known:
                raise DataError(path, lineno, "emotion", f"{s.emotion!r} is not in emotions_171.txt")
            if s.id in ids:
                raise DataError(path, lineno, "id", f"duplicate id {s.id!r} (also in {ids[s.id].name})")
            ids[s.id] = path
            out.append(s)
    if not out:
        raise DataError(data_dir / "stories", None, None, "no story files")
    return [s for s in out if split is None or s.split == split]


def load_neutral(data_dir: Path = DATA_DIR) -> list[Neutral]:
    return _load(data_dir / "neutral.jsonl", Neutral)


def load_activities(data_dir: Path = DATA_DIR) -> list[Activity]:
    return _load(data_dir / "activities.jsonl", Activity)


def load_pressure(data_dir: Path = DATA_DIR) -> list[Pressure]:
    return _load(data_dir / "pressure.jsonl", Pressure)


def load_conversations(data_dir: Path = DATA_DIR) -> list[Conversation]:
    return _load(data_dir / "conversations.jsonl", Conversation)


def load_intensity(data_dir: Path = DATA_DIR) -> list[IntensityTemplate]:
    known = set(emotion_list(data_dir))
    recs = _load(data_dir / "intensity.jsonl", IntensityTemplate)
    for r in recs:
        for e in (r.target, *r.contrast):
            if e not in known:
                raise DataError(*_source(r), "target/contrast", f"{e!r} is not an emotion of the study")
    return recs


def load_control_questions(data_dir: Path = DATA_DIR) -> list[ControlQuestion]:
    return _load(data_dir / "control_questions.jsonl", ControlQuestion)


@dataclass(frozen=True)
class Corpus:
    emotions: dict[str, Emotion]
    stories: list[Story]
    neutral: list[Neutral]
    activities: list[Activity]
    pressure: list[Pressure]
    conversations: list[Conversation]
    intensity: list[IntensityTemplate]
    control_questions: list[ControlQuestion]


def load_corpus(data_dir: Path = DATA_DIR) -> Corpus:
    data_dir = Path(data_dir)
    _require_dir(data_dir)
    return Corpus(load_emotions(data_dir), load_stories(data_dir), load_neutral(data_dir),
                  load_activities(data_dir), load_pressure(data_dir), load_conversations(data_dir),
                  load_intensity(data_dir), load_control_questions(data_dir))


# --- quality checks ---------------------------------------------------------------------------

def word_count(text: str) -> int:
    return len(text.split())


def contains_phrase(text: str, phrase: str) -> bool:
    """Whole-word, case-insensitive match (hyphens and spaces inside ``phrase`` match literally)."""
    text, phrase = text.lower(), phrase.lower()
    # The substring test is exact as a filter (a whole-word match is a substring) and far cheaper than the
    # regex, which the corpus checks run for every story against every emotion word.
    return phrase in text and _phrase_pattern(phrase).search(text) is not None


@functools.lru_cache(maxsize=None)
def _phrase_pattern(phrase: str) -> re.Pattern:
    # The corpus has more banned phrases than re's own cache holds, so it would recompile them all.
    return re.compile(r"(?<![\w-])" + re.escape(phrase) + r"(?![\w-])")


def _normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def _shingles(text: str, k: int = 5) -> set[tuple[str, ...]]:
    w = _normalise(text).split()
    return {tuple(w[i:i + k]) for i in range(len(w) - k + 1)}


def near_duplicates(items: list[tuple[str, str]], *, threshold: float = 0.3) -> list[tuple[str, str, float]]:
    """Pairs whose word 5-gram overlap, relative to the smaller text, exceeds ``threshold``.

    Uses an inverted index so only pairs sharing a 5-gram are compared.
    """
    sh = [_shingles(t) for _, t in items]
    index: dict[tuple, list[int]] = collections.defaultdict(list)
    for i, s in enumerate(sh):
        for g in s:
            index[g].append(i)
    shared: collections.Counter = collections.Counter()
    for members in index.values():
        if 1 < len(members) < 50:
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    shared[members[a], members[b]] += 1
    out = []
    for (a, b), n in shared.items():
        frac = n / max(1, min(len(sh[a]), len(sh[b])))
        if frac > threshold:
            out.append((items[a][0], items[b][0], round(frac, 3)))
    return sorted(out)


class _Violation(NamedTuple):
    text: str
    path: Path | None = None
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.text}" if self.path is not None else self.text


def _violations(corpus: Corpus) -> dict[str, list[_Violation]]:
    """Every violation of every quality check, by check name, located at its record's file line."""
    v: dict[str, list[_Violation]] = {k: [] for k in (
        "banned_word", "story_length", "min_train", "min_heldout", "exact_duplicate", "near_duplicate",
        "split_overlap", "writer_family", "writer_coverage", "person_balance", "neutral_length",
        "activity_category_count", "pressure_options", "intensity_values", "control_options")}

    def at(record: object, text: str) -> _Violation:
        return _Violation(text, *_source(record))

    lo, hi = STORY_WORDS
    by_emotion: dict[str, collections.Counter] = {e: collections.Counter() for e in corpus.emotions}
    for s in corpus.stories:
        banned = corpus.emotions[s.emotion].banned
        for b in banned:
            if contains_phrase(s.text, b):
                v["banned_word"].append(at(s, f"{s.id}: {b!r}"))
        n = word_count(s.text)
        if not lo <= n <= hi:
            v["story_length"].append(at(s, f"{s.id}: {n} words"))
        by_emotion[s.emotion][s.split] += 1
    for e, c in by_emotion.items():
        if c["train"] < MIN_TRAIN:
            v["min_train"].append(_Violation(f"{e}: {c['train']} train stories"))
        if c["heldout"] < MIN_HELDOUT:
            v["min_heldout"].append(_Violation(f"{e}: {c['heldout']} held-out stories"))
    located = [(s, s.text) for s in corpus.stories] + [(n, _neutral_plain(n)) for n in corpus.neutral]
    records = {r.id: r for r, _ in located}
    texts = [(r.id, t) for r, t in located]
    seen: dict[str, str] = {}
    for r, t in located:
        key = _normalise(t)
        if key in seen:
            v["exact_duplicate"].append(at(r, f"{seen[key]} = {r.id}"))
        seen[key] = r.id
    v["near_duplicate"] = [at(records[b], f"{a} ~ {b} ({f:.2f})") for a, b, f in near_duplicates(texts)]
    split_of: dict[str, set] = collections.defaultdict(set)
    for s in corpus.stories:
        split_of[_normalise(s.text)].add(s.split)
    v["split_overlap"] = [_Violation(t[:40]) for t, sp in split_of.items() if len(sp) > 1]
    # A batch writer wrote one family; a crossed writer wrote one story for every emotion, half of them
    # in the first person (per writer and per emotion), so neither writer nor person can stand in for emotion.
    crossed: dict[str, collections.Counter] = {w: collections.Counter() for w in CROSSED_WRITERS}
    person_by_writer: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    person_by_emotion: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in corpus.stories:
        if s.writer.startswith("batch-") and s.writer != f"batch-{corpus.emotions[s.emotion].family}":
            v["writer_family"].append(at(s, f"{s.id}: writer {s.writer} but family {corpus.emotions[s.emotion].family}"))
        if s.writer in crossed:
            crossed[s.writer][s.emotion] += 1
            person_by_writer[s.writer][s.person] += 1
            person_by_emotion[s.emotion][s.person] += 1
    for w, c in crossed.items():
        missing = [e for e in corpus.emotions if c[e] != 1]
        if missing:
            v["writer_coverage"].append(_Violation(f"{w}: {len(missing)} emotions without exactly one story "
                                                   f"(e.g. {missing[:3]})"))
        n = sum(person_by_writer[w].values())
        if n and abs(person_by_writer[w]["first"] / n - 0.5) > 0.1:
            v["person_balance"].append(_Violation(f"{w}: {person_by_writer[w]['first']} of {n} in the first person"))
    for e, c in person_by_emotion.items():
        if abs(c["first"] - c["third"]) > 2:
            v["person_balance"].append(_Violation(f"{e}: crossed writers' stories {c['first']} first / "
                                                  f"{c['third']} third person"))
    for n in corpus.neutral:
        w = word_count(_neutral_plain(n))
        if not NEUTRAL_WORDS[0] <= w <= NEUTRAL_WORDS[1]:
            v["neutral_length"].append(at(n, f"{n.id}: {w} words"))
    cats = collections.Counter(a.category for a in corpus.activities)
    v["activity_category_count"] = [_Violation(f"{c}: {cats[c]}") for c in ACTIVITY_CATEGORIES if cats[c] < 8]
    for p in corpus.pressure:
        if _normalise(p.ethical) == _normalise(p.unethical) or re.search(r"\(?\b[AB]\)", p.ethical + p.unethical):
            v["pressure_options"].append(at(p, p.id))
    for t in corpus.intensity:
        if len(t.values) < 8:
            v["intensity_values"].append(at(t, t.id))
    for q in corpus.control_questions:
        if _normalise(q.correct) == _normalise(q.wrong):
            v["control_options"].append(at(q, q.id))
    return v


def quality_report(corpus: Corpus) -> dict[str, list[str]]:
    """Every violation of every quality check, by check name (empty lists when clean).

    A violation of one record reads ``file:line: problem``; corpus-wide ones (too few stories for
    an emotion, a thin activity category) have no line.
    """
    return {k: [str(x) for x in xs] for k, xs in _violations(corpus).items()}


def check_data(data_dir: Path = DATA_DIR) -> None:
    """Load every data set and run every quality check; raise :class:`DataError` on the first problem.

    The message is one line: the first violation with its ``file:line`` and how many there are in all.
    """
    data_dir = Path(data_dir)
    found = [(k, x) for k, xs in _violations(load_corpus(data_dir)).items() for x in xs]
    if found:
        check, first = found[0]
        raise DataError(first.path or data_dir, first.line, None,
                        f"{check}: {first.text} (1 of {len(found)} data-quality violations; "
                        f"'python -m emolib.data check --data-dir {data_dir}' lists them all)")


def _neutral_plain(n: Neutral) -> str:
    return n.render()


def _length_stats(values: list[int]) -> dict:
    return {"n": len(values), "mean": round(statistics.mean(values), 1), "sd": round(statistics.pstdev(values), 1),
            "min": min(values), "max": max(values)}


def corpus_stats(corpus: Corpus) -> dict:
    """Counts, lengths and the number of violations of each quality check."""
    per_emotion = {e: {"family": corpus.emotions[e].family, "train": 0, "heldout": 0} for e in corpus.emotions}
    for s in corpus.stories:
        per_emotion[s.emotion][s.split] += 1
    lengths_by_family: dict[str, list[int]] = collections.defaultdict(list)
    for s in corpus.stories:
        lengths_by_family[corpus.emotions[s.emotion].family].append(word_count(s.text))
    other_mentions = 0
    names = list(corpus.emotions)
    for s in corpus.stories:
        other_mentions += sum(contains_phrase(s.text, e) for e in names if e != s.emotion)
    report = quality_report(corpus)
    per_writer_family: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for s in corpus.stories:
        per_writer_family[s.writer][corpus.emotions[s.emotion].family] += 1
    per_emotion_total = collections.Counter(s.emotion for s in corpus.stories)
    return {
        "stories": {
            "n": len(corpus.stories),
            "n_emotions": len(corpus.emotions),
            "n_emotions_with_minimum": sum(c["train"] >= MIN_TRAIN and c["heldout"] >= MIN_HELDOUT for c in per_emotion.values()),
            "per_emotion": per_emotion,
            "per_split": dict(collections.Counter(s.split for s in corpus.stories)),
            "per_person": dict(collections.Counter(s.person for s in corpus.stories)),
            "min_per_emotion": min(per_emotion_total[e] for e in corpus.emotions),
            "n_crossed_writers_complete": sum(
                {e for e in corpus.emotions} <= {s.emotion for s in corpus.stories if s.writer == w}
                for w in CROSSED_WRITERS),
            "per_writer": dict(sorted(collections.Counter(s.writer for s in corpus.stories).items())),
            "per_writer_family": {w: dict(sorted(c.items())) for w, c in sorted(per_writer_family.items())},
            "n_topics_used": len({s.topic for s in corpus.stories}),
            "words": _length_stats([word_count(s.text) for s in corpus.stories]),
            "words_by_family": {f: _length_stats(v) for f, v in sorted(lengths_by_family.items())},
            "other_emotion_word_mentions": other_mentions,
        },
        "neutral": {"n": len(corpus.neutral), "per_kind": dict(collections.Counter(n.kind for n in corpus.neutral)),
                    "words": _length_stats([word_count(_neutral_plain(n)) for n in corpus.neutral])},
        "activities": {"n": len(corpus.activities), "per_category": dict(collections.Counter(a.category for a in corpus.activities))},
        "pressure": {"n": len(corpus.pressure), "per_pressure": dict(collections.Counter(p.pressure for p in corpus.pressure)),
                     "per_unethical_type": dict(collections.Counter(p.unethical_type for p in corpus.pressure))},
        "conversations": {"n": len(corpus.conversations)},
        "intensity": {"n": len(corpus.intensity), "min_values": min(len(t.values) for t in corpus.intensity)},
        "control_questions": {"n": len(corpus.control_questions)},
        "style": _style_summary(corpus),
        "violations": {k: len(x) for k, x in report.items()},
    }


def _style_summary(corpus: Corpus) -> dict:
    """The style audit (``emolib.style``): each covariate's r with valence and arousal per story set,
    and each writer's mean covariates. An r is None where the covariate is constant over emotions."""
    from emolib.ratings import load_ratings
    from emolib.style import COVARIATES, MAX_ABS_R, story_style, style_audit, style_confounds

    audit = style_audit(corpus.stories, load_ratings(list(corpus.emotions)).table)
    out: dict = {"max_abs_r": MAX_ABS_R, "confounds": style_confounds(audit), "n_rated": int(audit.n_emotions.iloc[0])}
    for r in audit.itertuples():
        out.setdefault(r.stories, {})[r.covariate] = {
            dim: (None if getattr(r, f"{dim}_r") != getattr(r, f"{dim}_r") else round(float(getattr(r, f"{dim}_r")), 3))
            for dim in ("valence", "arousal")}
    per_writer = story_style(corpus.stories).groupby("writer")[list(COVARIATES)].mean()
    out["per_writer"] = {w: {c: round(float(v), 3) for c, v in row.items()} for w, row in per_writer.iterrows()}
    return out


def texts_hash(texts: list[str]) -> str:
    """A short stable hash of an ordered list of texts (for cache keys and metadata)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.data", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("stats", help="counts, lengths and quality-check violations")
    st.add_argument("--json", action="store_true")
    st.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ck = sub.add_parser("check", help="list every violation; exit 1 if any")
    ck.add_argument("--data-dir", type=Path, default=DATA_DIR)
    args = parser.parse_args(argv)
    try:
        corpus = load_corpus(args.data_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "check":
        found = [(k, x) for k, xs in _violations(corpus).items() for x in xs]
        for k, x in found:
            # file:line first, as compilers print it, so editors and terminals can jump to the line.
            print(f"{x.path}:{x.line}: {k}: {x.text}" if x.path is not None else f"{k}: {x.text}")
        print(f"{len(found)} violations" if found else "ok: no violations")
        return 1 if found else 0
    stats = corpus_stats(corpus)
    if args.json:
        print(json.dumps(stats, indent=2))
    else:
        s = stats["stories"]
        print(f"stories: {s['n']} over {s['n_emotions']} emotions ({s['n_emotions_with_minimum']} at the minimum "
              f"{MIN_TRAIN} train + {MIN_HELDOUT} held-out; at least {s['min_per_emotion']} per emotion); "
              f"words mean {s['words']['mean']} [{s['words']['min']}, {s['words']['max']}]")
        families = sorted({f for c in s["per_writer_family"].values() for f in c})
        print("stories per writer x family:")
        print("  " + " " * 16 + " ".join(f"{f[:5]:>5}" for f in families) + "  total")
        for w, c in s["per_writer_family"].items():
            print(f"  {w:<16}" + " ".join(f"{c.get(f, 0):>5}" for f in families) + f"  {sum(c.values()):>5}")
        for key in ("neutral", "activities", "pressure", "conversations", "intensity", "control_questions"):
            print(f"{key}: {stats[key]['n']}")
        print("violations:", ", ".join(f"{k}={n}" for k, n in stats["violations"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
