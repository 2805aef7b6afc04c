"""The chapter runner: files shared between chapters, parameters checked, failures leave the last good run."""

from __future__ import annotations

from pathlib import Path

import pytest

from emolib import book
from emolib.book import Chapter, ChapterFailed, run_chapters

FIXTURES = Path(__file__).parent / "fixtures" / "chapters"
CHAPTERS = (Chapter("a_good"), Chapter("b_reads"))


def run(tmp_path, **kw):
    return run_chapters("tiny/model", out=tmp_path, chapters=kw.pop("chapters", CHAPTERS), notebooks_dir=FIXTURES,
                        **kw)


def test_chapters_share_files_and_write_executed_notebooks(tmp_path):
    target = run(tmp_path, overrides={"count": 5})
    assert target == tmp_path / "tiny__model"
    assert (target / "b.txt").read_text() == "TINY/MODEL 5 FALSE"
    assert (target / "a_good.ipynb").is_file() and (target / "b_reads.ipynb").is_file()
    assert not list(target.glob(".*input*")), "no temporary inputs are left in the run"


def test_failing_chapter_is_named_and_previous_run_is_untouched(tmp_path):
    target = run(tmp_path)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with pytest.raises(ChapterFailed, match="chapter b_reads failed on tiny/model: ValueError: planned failure"):
        run(tmp_path, overrides={"fail": True, "count": 9})
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["tiny__model"], "no temporary run folder is left behind"


@pytest.mark.parametrize("overrides, message", [
    ({"count": "three"}, "parameter 'count' must be int"),
    ({"fail": 1}, "parameter 'fail' must be bool"),
    ({"colour": "red"}, "no chapter takes parameter"),
])
def test_wrong_parameters_are_refused_before_running(tmp_path, overrides, message):
    with pytest.raises(ChapterFailed, match=message):
        run(tmp_path, overrides=overrides)
    assert not (tmp_path / "tiny__model").exists()


def test_unknown_chapter(tmp_path):
    with pytest.raises(ChapterFailed, match="unknown chapter 'zz'"):
        run(tmp_path, chapters=(Chapter("zz"),))
    with pytest.raises(ChapterFailed, match="unknown chapter"):
        book.select_chapters("01_capture,99_nothing")
    assert [c.name for c in book.select_chapters("02_extraction,01_capture")] == ["01_capture", "02_extraction"]


def test_subset_rerun_keeps_earlier_chapter_outputs(tmp_path):
    run(tmp_path, chapters=(Chapter("a_good"),))
    target = run(tmp_path, chapters=(Chapter("b_reads"),))
    assert (target / "a.txt").is_file() and (target / "b.txt").is_file()


def test_cli_exit_codes(tmp_path, capsys):
    assert book.main(["run", "--model", "x", "--chapters", "nope", "--no-build"]) == 1
    assert "unknown chapter" in capsys.readouterr().err
    assert book.main(["run", "--model", "x", "--param", "novalue", "--no-build"]) == 1
    assert book.parse_params(["a=1", "b=0.5", "c=hello", "d=True"]) == {"a": 1, "b": 0.5, "c": "hello", "d": True}


def _executed(target):
    return {p.name: p.read_bytes() for p in target.glob("*.ipynb")}


def test_unchanged_chapters_are_reused_and_changed_ones_rerun(tmp_path, capsys):
    target = run(tmp_path, overrides={"count": 5})
    first = _executed(target)
    assert set(book._read_keys(target)) == {"a_good", "b_reads"}
    capsys.readouterr()

    run(tmp_path, overrides={"count": 5})
    err = capsys.readouterr().err
    assert "reusing a_good" in err and "reusing b_reads" in err
    assert _executed(target) == first, "reused chapters keep their executed notebooks byte for byte"

    # A parameter of the second chapter only: the first is reused, the second runs again.
    run(tmp_path, overrides={"count": 5, "fail": False, "suffix": "!"})
    err = capsys.readouterr().err
    assert "reusing a_good" in err and "running b_reads" in err
    assert (target / "b.txt").read_text() == "TINY/MODEL 5 FALSE!"

    # A parameter of the first chapter: both run again (the second reads what the first wrote).
    run(tmp_path, overrides={"count": 6, "suffix": "!"})
    err = capsys.readouterr().err
    assert "running a_good" in err and "running b_reads" in err
    assert (target / "b.txt").read_text() == "TINY/MODEL 6 FALSE!"

    run(tmp_path, overrides={"count": 6, "suffix": "!"}, force=True)
    assert "reusing" not in capsys.readouterr().err


def test_edited_chapter_source_runs_again(tmp_path, capsys):
    nbdir = tmp_path / "nb"
    nbdir.mkdir()
    for p in FIXTURES.glob("*.md"):
        (nbdir / p.name).write_text(p.read_text())
    out = tmp_path / "runs"
    kw = dict(out=out, chapters=CHAPTERS, notebooks_dir=nbdir)
    run_chapters("tiny/model", **kw)
    capsys.readouterr()
    src = nbdir / "a_good.md"
    src.write_text(src.read_text().replace("# A chapter that writes a file", "# A chapter that writes one file"))
    run_chapters("tiny/model", **kw)
    err = capsys.readouterr().err
    assert "running a_good" in err and "running b_reads" in err


def test_keys_depend_on_everything_that_changes_outputs():
    base = book.chapter_key("src", {"a": 1, "run_dir": "/tmp/x"}, fingerprint="f", upstream="u")
    assert base == book.chapter_key("src", {"run_dir": "/tmp/other", "a": 1}, fingerprint="f", upstream="u")
    for changed in (book.chapter_key("src2", {"a": 1}, fingerprint="f", upstream="u"),
                    book.chapter_key("src", {"a": 2}, fingerprint="f", upstream="u"),
                    book.chapter_key("src", {"a": 1}, fingerprint="g", upstream="u"),
                    book.chapter_key("src", {"a": 1}, fingerprint="f", upstream="v")):
        assert changed != base
    assert len(book.inputs_fingerprint()) == 64
