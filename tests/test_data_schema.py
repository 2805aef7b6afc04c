"""The loader's contract on small synthetic files: malformed records name file, line and field."""

from __future__ import annotations

import json
import shutil

import pytest

from emolib import data
from emolib.data import DataError

STORY = {"id": "afraid-01", "emotion": "afraid", "split": "train", "writer": "batch-fear", "topic": "commute", "person": "first",
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
    (dict(STORY, id="afraid-02", writer="Alice"), 2, "writer", "use w<N>"),
    ({k: v for k, v in STORY.items() if k != "writer"} | {"id": "afraid-02"}, 2, "writer", "missing"),
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


# --- physical line numbers, encodings and missing folders -------------------------------------

def test_errors_report_the_physical_line_after_blank_lines(data_dir):
    """Blank lines shift records from lines: the error names the file's line, not the record's index."""
    path = data_dir / "stories" / "fear.jsonl"
    path.write_text("\n" + json.dumps(STORY) + "\n\n\n" + json.dumps(dict(STORY, id="afraid-02", emotion="hungry")) + "\n")
    with pytest.raises(DataError) as info:
        data.load_stories(data_dir)
    assert (info.value.line, info.value.field) == (5, "emotion") and f"{path}:5:" in str(info.value)


def test_intensity_error_reports_the_physical_line(tmp_path):
    shutil.copy(data.DATA_DIR / "emotions_171.txt", tmp_path / "emotions_171.txt")
    rec = {"id": "int-1", "template": "I took {x} pills.", "target": "afraid", "contrast": ["happy"],
           "unit": "pills", "values": [1, 2, 4, 8, 16, 32, 64, 128]}
    write(tmp_path / "intensity.jsonl", [rec, "", "", dict(rec, id="int-2", target="hangry")])
    with pytest.raises(DataError) as info:
        data.load_intensity(tmp_path)
    assert info.value.line == 4 and info.value.path == tmp_path / "intensity.jsonl"


def test_line_separator_inside_a_string_is_not_a_line_break(data_dir):
    """U+2028 is legal inside a JSON string; splitting on it would cut the record in two."""
    path = data_dir / "stories" / "fear.jsonl"
    text = STORY["text"] + "\u2028And then the lights went out."
    path.write_text(json.dumps(dict(STORY, text=text), ensure_ascii=False) + "\n"
                    + json.dumps(dict(STORY, id="afraid-02", topic="space-travel")) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        data.load_stories(data_dir)
    assert (info.value.line, info.value.field) == (2, "topic")
    path.write_text(json.dumps(dict(STORY, text=text), ensure_ascii=False) + "\n", encoding="utf-8")
    assert data.load_stories(data_dir)[0].text == text


def test_non_utf8_file_is_a_data_error_with_its_line(data_dir):
    path = data_dir / "stories" / "fear.jsonl"
    path.write_bytes(json.dumps(STORY).encode() + b"\n" + json.dumps(dict(STORY, id="afraid-02")).encode()
                     .replace(b"headlights", b"h\xe9adlights") + b"\n")
    with pytest.raises(DataError, match="not UTF-8.*0xe9") as info:
        data.load_stories(data_dir)
    assert info.value.line == 2 and "\n" not in str(info.value)


def test_missing_data_folder_is_a_data_error(tmp_path):
    for call in (data.load_corpus, data.check_data, data.emotion_list, data.load_stories):
        with pytest.raises(DataError, match="data folder does not exist"):
            call(tmp_path / "nope")


def test_loaded_records_keep_equality_and_repr(data_dir):
    """The remembered file line is no dataclass field: equal texts from different lines stay equal."""
    write(data_dir / "stories" / "fear.jsonl", ["", STORY])
    loaded = data.load_stories(data_dir)[0]
    built = data.Story(**STORY)
    assert loaded == built and hash(loaded) == hash(built) and repr(loaded) == repr(built)
    assert data._source(loaded) == (data_dir / "stories" / "fear.jsonl", 2)


def test_quality_report_locates_banned_words(data_dir):
    path = data_dir / "stories" / "fear.jsonl"
    bad = dict(STORY, id="afraid-02", text="I was afraid of the dark lane, so I walked the long way round.")
    write(path, [STORY, "", bad])
    emotions = {"afraid": data.Emotion("afraid", "fear", ("afraid", "fear"))}
    corpus = data.Corpus(emotions, data.load_stories(data_dir), [], [], [], [], [], [])
    assert data.quality_report(corpus)["banned_word"] == [f"{path}:3: afraid-02: 'afraid'"]


@pytest.fixture(scope="module")
def corpus_copy(tmp_path_factory):
    """The shipped corpus with one banned word planted in the fourth line of fear.jsonl (after a blank line)."""
    root = tmp_path_factory.mktemp("corpus") / "data"
    shutil.copytree(data.DATA_DIR, root, ignore=shutil.ignore_patterns("*.csv", "*.md"))
    path = root / "stories" / "fear.jsonl"
    lines = path.read_text(encoding="utf-8").split("\n")
    rec = json.loads(lines[2])
    rec["text"] = rec["text"].replace(" ", f" {rec['emotion']} ", 1)  # always among its own banned words
    lines[2] = json.dumps(rec, ensure_ascii=False)
    path.write_text("\n".join([""] + lines), encoding="utf-8")
    return root, path, f"{rec['id']}: {rec['emotion']!r}"


def test_check_data_raises_one_line_with_file_and_line(corpus_copy):
    root, path, problem = corpus_copy
    with pytest.raises(DataError) as info:
        data.check_data(root)
    msg = str(info.value)
    assert (info.value.path, info.value.line) == (path, 4)
    assert msg.startswith(f"{path}:4: banned_word: {problem} (1 of ") and "\n" not in msg
    assert data.check_data() is None, "the shipped corpus passes"


def test_check_cli_prints_file_and_line(corpus_copy):
    import subprocess
    import sys

    root, path, problem = corpus_copy
    proc = subprocess.run([sys.executable, "-m", "emolib.data", "check", "--data-dir", str(root)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"{path}:4: banned_word: {problem}" in proc.stdout.splitlines()
    proc = subprocess.run([sys.executable, "-m", "emolib.data", "check", "--data-dir", str(root / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [f"error: {root / 'nope'}: data folder does not exist; pass the repository's data/ folder"]
