"""The loader's contract on small synthetic files: malformed records name file, line and field."""

from __future__ import annotations

import json
import shutil

import pytest

from emolib import data
from emolib.data import DataError

STORY = {"id": "afraid-01", "emotion": "afraid", "split": "train", "topic": "commute", "person": "first",
         "text": "My hands would not stop shaking on the wheel as the headlights behind me kept pace."}


@pytest.fixture()
def data_dir(tmp_path):
    shutil.copy(data.DATA_DIR / "emotions_171.txt", tmp_path / "emotions_171.txt")
    (tmp_path / "stories").mkdir()
    return tmp_path


def write(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def test_valid_stories_load_in_order(data_dir):
    second = dict(STORY, id="afraid-02", split="heldout")
    write(data_dir / "stories" / "fear.jsonl", [STORY, second])
    stories = data.load_stories(data_dir)
    assert [s.id for s in stories] == ["afraid-01", "afraid-02"]
    assert [s.id for s in data.load_stories(data_dir, split="heldout")] == ["afraid-02"]
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_stories(data_dir, split="test")


@pytest.mark.parametrize("bad, line, field, problem", [
    ("{not json", 2, None, "invalid JSON"),
    (dict(STORY, id="afraid-02", topic="space-travel"), 2, "topic", "not one of"),
    (dict(STORY, id="afraid-02", split="validation"), 2, "split", "not one of"),
    ({k: v for k, v in STORY.items() if k != "person"} | {"id": "afraid-02"}, 2, "person", "missing"),
    (dict(STORY, id="afraid-02", colour="red"), 2, "colour", "unknown field"),
    (dict(STORY), 2, "id", "duplicate"),
    (dict(STORY, id="afraid-02", text=""), 2, "text", "non-empty string"),
    (dict(STORY, id="afraid-02", emotion="hungry"), 2, "emotion", "not in emotions_171"),
])
def test_malformed_story_names_file_line_and_field(data_dir, bad, line, field, problem):
    path = write(data_dir / "stories" / "fear.jsonl", [STORY, bad])
    with pytest.raises(DataError) as info:
        data.load_stories(data_dir)
    err = info.value
    assert err.path == path and err.line == line and err.field == field
    assert problem in str(err) and f"{path}:{line}" in str(err)


def test_duplicate_id_across_files(data_dir):
    write(data_dir / "stories" / "fear.jsonl", [STORY])
    write(data_dir / "stories" / "joy.jsonl", [dict(STORY, emotion="happy")])
    with pytest.raises(DataError, match="duplicate id 'afraid-01' \\(also in fear.jsonl\\)"):
        data.load_stories(data_dir)


def test_empty_and_missing_files(data_dir):
    (data_dir / "stories" / "fear.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no records"):
        data.load_stories(data_dir)
    with pytest.raises(DataError, match="does not exist"):
        data.load_neutral(data_dir)


def test_neutral_needs_exactly_one_of_text_or_messages(tmp_path):
    base = {"id": "n-1", "kind": "dialogue", "topic": "garden"}
    msgs = [{"role": "user", "content": "How deep should tulip bulbs go?"},
            {"role": "assistant", "content": "About three times their own height."}]
    write(tmp_path / "neutral.jsonl", [dict(base, messages=msgs)])
    assert data.load_neutral(tmp_path)[0].messages[1]["role"] == "assistant"
    write(tmp_path / "neutral.jsonl", [dict(base, messages=msgs, text="both")])
    with pytest.raises(DataError, match="exactly one of these"):
        data.load_neutral(tmp_path)
    write(tmp_path / "neutral.jsonl", [dict(base, messages=[{"role": "robot", "content": "x"}])])
    with pytest.raises(DataError, match="field 'messages'"):
        data.load_neutral(tmp_path)


def test_intensity_template_rules(tmp_path):
    shutil.copy(data.DATA_DIR / "emotions_171.txt", tmp_path / "emotions_171.txt")
    rec = {"id": "int-1", "template": "I took {x} pills.", "target": "afraid", "contrast": ["happy"],
           "unit": "pills", "values": [1, 2, 4, 8, 16, 32, 64, 128]}
    write(tmp_path / "intensity.jsonl", [rec])
    t = data.load_intensity(tmp_path)[0]
    assert t.render(16) == "I took 16 pills."
    for bad, field in [(dict(rec, template="no placeholder"), "template"),
                       (dict(rec, values=[1, 2, 3]), "values"),
                       (dict(rec, values=[1, 2, 3, 4, 5, 6, 8, 7]), "values")]:
        write(tmp_path / "intensity.jsonl", [bad])
        with pytest.raises(DataError, match=f"field '{field}'"):
            data.load_intensity(tmp_path)
    write(tmp_path / "intensity.jsonl", [dict(rec, target="hangry")])
    with pytest.raises(DataError, match="not an emotion of the study"):
        data.load_intensity(tmp_path)


def test_phrase_matching_is_whole_word():
    assert data.contains_phrase("She was Afraid.", "afraid")
    assert not data.contains_phrase("unafraid of nothing", "afraid")
    assert data.contains_phrase("finally at ease here", "at ease")
    assert not data.contains_phrase("self-confident", "confident")


def test_near_duplicates_found_only_when_overlapping():
    a = "the rain fell on the roof all night and nobody in the house could sleep at all"
    b = "the rain fell on the roof all night and nobody in the house could sleep or rest"
    c = "a completely different sentence about trains leaving the station early in the morning"
    pairs = data.near_duplicates([("a", a), ("b", b), ("c", c)])
    assert [(x, y) for x, y, _ in pairs] == [("a", "b")]
