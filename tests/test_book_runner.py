"""The chapter runner: files shared between chapters, parameters checked, failures and interruptions
leave the last good run, quick runs kept apart, published notebooks free of temporary paths."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from emolib import book, progress
from emolib.book import Chapter, ChapterFailed, RunInterrupted, RunRefused, run_chapters

FIXTURES = Path(__file__).parent / "fixtures" / "chapters"
CHAPTERS = (Chapter("a_good"), Chapter("b_reads"))
ROOT = Path(__file__).resolve().parent.parent


def run(tmp_path, **kw):
    return run_chapters("tiny/model", out=tmp_path, chapters=kw.pop("chapters", CHAPTERS), notebooks_dir=FIXTURES,
                        **kw)


def write_chapter(folder: Path, name: str, parameters: str, body: str) -> None:
    """A fake chapter source like the fixtures: a parameters cell, then one code cell."""
    folder.mkdir(parents=True, exist_ok=True)
    head = ("---\njupytext:\n  text_representation:\n    extension: .md\n    format_name: myst\n"
            "kernelspec:\n  display_name: Python 3\n  language: python\n  name: python3\n---\n\n")
    (folder / f"{name}.md").write_text(
        head + f"# A fake chapter {name}\n\n```{{code-cell}} ipython3\n:tags: [parameters]\n\n"
        + textwrap.dedent(parameters).strip() + "\n```\n\n```{code-cell} ipython3\n"
        + textwrap.dedent(body).strip() + "\n```\n")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_chapters_share_files_and_write_executed_notebooks(tmp_path):
    target = run(tmp_path, overrides={"count": 5})
    assert target == tmp_path / "tiny__model"
    assert (target / "b.txt").read_text() == "TINY/MODEL 5 FALSE"
    assert (target / "a_good.ipynb").is_file() and (target / "b_reads.ipynb").is_file()
    assert not list(target.glob(".*")), "no temporary inputs or progress files are left in the run"


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
    ({"count": (1, 2)}, "parameter 'count' must be int"),
    ({"colour": "red"}, r"no chapter takes parameter\(s\) \['colour'\]; these chapters take "
                        r"count: int, fail: bool, suffix: str \('python -m emolib.book params'"),
])
def test_wrong_parameters_are_refused_before_running(tmp_path, overrides, message):
    with pytest.raises(RunRefused, match=message):
        run(tmp_path, overrides=overrides)
    assert list(tmp_path.iterdir()) == [], "nothing is written for a refused run"


def test_unknown_parameter_of_one_chapter_lists_its_parameters_with_types():
    with pytest.raises(RunRefused, match=r"chapter b_reads: unknown parameter 'count'; it takes fail: bool, "
                                         r"suffix: str$"):
        book.check_parameters("b_reads", {"run_dir": "str", "fail": "bool", "suffix": "str"}, {"count": 1})


@pytest.mark.parametrize("name", sorted(book.RESERVED))
def test_reserved_parameters_are_refused_naming_their_flag(tmp_path, name, capsys):
    flag = book.RESERVED[name]
    with pytest.raises(RunRefused, match=f"parameter '{name}' is set by the runner; use {flag} instead"):
        run(tmp_path, overrides={name: "x"})
    assert book.main(["run", "--model", "x", "--no-build", "--out", str(tmp_path), "--param", f"{name}=y"]) == 1
    assert f"use {flag} instead" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_comma_lists_stay_text_for_text_parameters():
    parsed = book.parse_params(["alphas=0,0.1", "one=0.2", "quoted=\"0,0.1\"", "n=8", "x=0.5", "on=True", "w=hi"])
    coerced = {k: book.coerce_param(v, t) for (k, v), t in zip(
        parsed.items(), ["str", "str", "str", "int", "float", "bool", "str"])}
    assert coerced == {"alphas": "0,0.1", "one": "0.2", "quoted": "0,0.1", "n": 8, "x": 0.5, "on": True, "w": "hi"}
    assert all(type(v) is not book.ParamText for v in coerced.values()), "chapters get plain values"
    # A typed parameter still rejects a list, with the declared type in the message.
    with pytest.raises(RunRefused, match="parameter 'n' must be int, got tuple"):
        book.check_parameters("c", {"n": "int"}, {"n": book.coerce_param(book.ParamText("1,2"), "int")})
    assert book.coerce_param(5, "str") == 5, "values from Python are passed as given"


def test_unknown_and_repeated_chapters(tmp_path, capsys):
    with pytest.raises(RunRefused, match="unknown chapter 'zz'"):
        run(tmp_path, chapters=(Chapter("zz"),))
    with pytest.raises(RunRefused, match="unknown chapter"):
        book.select_chapters("01_capture,99_nothing")
    assert [c.name for c in book.select_chapters("02_extraction,01_capture")] == ["01_capture", "02_extraction"]
    with pytest.raises(RunRefused, match="names 01_capture more than once"):
        book.select_chapters("01_capture, 01_capture")
    for blank in (" , ", "", ","):
        with pytest.raises(RunRefused, match="names no chapter; the chapters are 01_capture, 02_extraction"):
            book.select_chapters(blank)
    with pytest.raises(RunRefused, match="a_good given more than once"):
        run(tmp_path, chapters=(Chapter("a_good"), Chapter("a_good")))
    with pytest.raises(RunRefused, match="no chapters to run"):
        run(tmp_path, chapters=())
    assert book.main(["run", "--chapters", " , ", "--no-build", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --chapters ' , ' names no chapter") and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_subset_rerun_keeps_earlier_chapter_outputs(tmp_path):
    run(tmp_path, chapters=(Chapter("a_good"),))
    target = run(tmp_path, chapters=(Chapter("b_reads"),))
    assert (target / "a.txt").is_file() and (target / "b.txt").is_file()


def test_cli_exit_codes(tmp_path, capsys):
    assert book.main(["run", "--model", "x", "--chapters", "nope", "--no-build"]) == 1
    assert "unknown chapter" in capsys.readouterr().err
    assert book.main(["run", "--model", "x", "--param", "novalue", "--no-build"]) == 1
    assert "expected NAME=VALUE" in capsys.readouterr().err
    assert book.parse_params(["a=1", "b = 0.5"]) == {"a": "1", "b": " 0.5"}


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


def test_runner_and_progress_code_do_not_change_the_fingerprint(tmp_path):
    for sub in ("data", "emolib"):
        (tmp_path / sub).mkdir()
    (tmp_path / "data" / "d.txt").write_text("d")
    (tmp_path / "emolib" / "capture.py").write_text("x = 1")
    base = book.inputs_fingerprint(tmp_path)
    (tmp_path / "emolib" / "book.py").write_text("runner")
    (tmp_path / "emolib" / "progress.py").write_text("display")
    assert book.inputs_fingerprint(tmp_path) == base
    (tmp_path / "data" / "drafts").mkdir()
    (tmp_path / "data" / "drafts" / "writer-w1.jsonl").write_text("{}")
    assert book.inputs_fingerprint(tmp_path) == base, "drafts are read by no chapter"
    (tmp_path / "data" / "stories").mkdir()
    (tmp_path / "data" / "stories" / "drafts.jsonl").write_text("{}")
    assert book.inputs_fingerprint(tmp_path) != base, "only the data/drafts folder is left out"
    (tmp_path / "data" / "stories" / "drafts.jsonl").unlink()
    (tmp_path / "emolib" / "capture.py").write_text("x = 2")
    assert book.inputs_fingerprint(tmp_path) != base


# --- quick runs are kept apart ---------------------------------------------------------------------

def test_quick_run_has_its_own_folder_and_never_mixes_with_a_full_run(tmp_path):
    one = (Chapter("a_good"),)
    quick = run(tmp_path, chapters=one, quick=True)
    assert quick == tmp_path / "tiny__model-quick"
    assert json.loads((quick / "run_keys.json").read_text())["quick"] is True
    assert (quick / "a.txt").read_text() == "tiny/model 3 True"

    # A full-run folder that holds a quick run (made by an earlier runner) is refused, untouched.
    full = tmp_path / "tiny__model"
    full.mkdir()
    (full / "run_keys.json").write_text(json.dumps({"a_good": "k", "quick": True}))
    (full / "quick_leftover.txt").write_text("from the quick run")
    before = snapshot(full)
    with pytest.raises(RunRefused, match="holds a quick run and this is a full one; .* add --force"):
        run(tmp_path, chapters=one)
    # Runs made before the mode was recorded: their metrics.json says it.
    (full / "run_keys.json").write_text(json.dumps({"a_good": "k"}))
    (full / "metrics.json").write_text(json.dumps({"quick": True}))
    before = snapshot(full)
    with pytest.raises(RunRefused, match="holds a quick run"):
        run(tmp_path, chapters=one)
    assert snapshot(full) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny__model", "tiny__model-quick"]

    # --force replaces it with a clean full run: nothing of the quick run is carried over.
    assert run(tmp_path, chapters=one, force=True) == full
    assert sorted(p.name for p in full.iterdir()) == ["a.txt", "a_good.ipynb", "run_keys.json"]
    assert json.loads((full / "run_keys.json").read_text())["quick"] is False


def test_quick_runs_are_outside_the_book_and_git():
    config = (ROOT / "_config.yml").read_text()
    assert '"book/runs/*-quick/*"' in re.search(r"exclude_patterns: \[.*\]", config).group(0)
    assert "book/runs/*-quick/" in (ROOT / ".gitignore").read_text().splitlines()
    assert book.run_folder("org/model", quick=True) == "org__model-quick"


def test_quick_cli_run_does_not_build_the_book(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(book, "CHAPTERS", (Chapter("a_good"),))
    monkeypatch.setattr(book, "NOTEBOOKS", FIXTURES)
    monkeypatch.setattr(book, "build_book", lambda **kw: pytest.fail("a quick run must not build the book"))
    assert book.main(["run", "--model", "tiny/model", "--quick", "--out", str(tmp_path)]) == 0
    assert "not building the book: it never shows quick runs" in capsys.readouterr().err
    assert (tmp_path / "tiny__model-quick" / "a.txt").is_file()


# --- interruptions and stale staging folders -------------------------------------------------------

SLEEPER = dict(parameters='run_dir = "."\nmarker = ""', body="""
    import os, pathlib, time
    pathlib.Path(marker).write_text(str(os.getpid()))
    time.sleep(120)
    """)


def _signal_when(marker: Path, signum: int) -> threading.Thread:
    """Send ``signum`` to this process once the chapter's kernel has written ``marker`` (it is running)."""
    def wait_and_send():
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if marker.is_file() and marker.read_text():
                os.kill(os.getpid(), signum)
                return
            time.sleep(0.1)

    t = threading.Thread(target=wait_and_send, daemon=True)
    t.start()
    return t


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return not book._pid_alive(pid)
    return state == "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_mid_chapter_stops_the_kernel_and_leaves_the_previous_run(tmp_path, signum):
    nbdir, out, marker = tmp_path / "nb", tmp_path / "runs", tmp_path / "kernel.pid"
    write_chapter(nbdir, "sleeper", **SLEEPER)
    kw = dict(out=out, notebooks_dir=nbdir, chapters=(Chapter("sleeper"),))
    target = out / "tiny__model"
    target.mkdir(parents=True)
    (target / "previous.txt").write_text("the last good run")
    before = snapshot(target)
    handler = signal.getsignal(signum)
    sender = _signal_when(marker, signum)
    start = time.monotonic()
    with pytest.raises(RunInterrupted) as info:
        run_chapters("tiny/model", overrides={"marker": str(marker)}, **kw)
    sender.join(5)
    assert info.value.signum == signum and info.value.exit_code == 128 + signum and not info.value.saved
    assert time.monotonic() - start < 60, "the interruption did not wait for the chapter to finish"
    assert snapshot(target) == before
    assert [p.name for p in out.iterdir()] == ["tiny__model"], "no staging folder is left behind"
    kernel = int(marker.read_text())
    deadline = time.monotonic() + 15
    while not _gone(kernel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _gone(kernel), "the chapter's kernel was shut down"
    assert signal.getsignal(signum) is handler, "the runner restores the signal handlers it replaced"


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path, monkeypatch, capsys):
    nbdir, out, marker = tmp_path / "nb", tmp_path / "runs", tmp_path / "kernel.pid"
    write_chapter(nbdir, "sleeper", **SLEEPER)
    monkeypatch.setattr(book, "CHAPTERS", (Chapter("sleeper"),))
    monkeypatch.setattr(book, "NOTEBOOKS", nbdir)
    handler = signal.getsignal(signal.SIGINT)
    _signal_when(marker, signal.SIGINT)
    rc = book.main(["run", "--model", "tiny/model", "--out", str(out), "--no-build", "--param", f"marker={marker}"])
    err = capsys.readouterr().err
    assert rc == 130
    assert err.splitlines()[-1] == "interrupted; the previous run is untouched"
    assert "Traceback" not in err
    assert signal.getsignal(signal.SIGINT) is handler, "the runner restores the signal handlers it replaced"
    assert list(out.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_folders_are_removed_and_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getpid()
    names = {
        f".m.pid{dead}.0a1b2c3d.tmp": "gone",      # owner gone
        f".m.old-{dead}": "gone",                  # a finished replacement's leftover
        f".m.pid{alive}.0a1b2c3d.tmp": "keep",     # a running run (this process): kept, however old
        ".m.abcdefgh.tmp": "old",                  # an earlier runner's: no owner recorded, so by age
        f".m.x.pid{dead}.0a1b2c3d.tmp": "keep",    # another model's (m.x)
        f".m-quick.pid{dead}.0a1b2c3d.tmp": "keep",  # the quick run's: quick runs clean those
        "m": "keep",
        ".m.pid12.notes.txt": "keep",
    }
    for name in names:
        (tmp_path / name).mkdir()

    def removed(**kw):
        return sorted(p.name for p in book.remove_stale_runs(tmp_path, "m", **kw))

    assert removed() == sorted(n for n, why in names.items() if why == "gone")
    time.sleep(0.05)
    assert removed(max_age_s=0.01) == sorted(n for n, why in names.items() if why == "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, why in names.items() if why == "keep")


def test_a_copied_old_run_does_not_make_a_staging_folder_look_stale(tmp_path):
    import shutil

    previous = tmp_path / "m"
    (previous / "figures").mkdir(parents=True)
    (previous / "figures" / "f.png").write_text("png")
    long_ago = time.time() - 30 * 24 * 3600
    for p in (previous / "figures" / "f.png", previous / "figures", previous):
        os.utime(p, (long_ago, long_ago))
    staging = tmp_path / ".m.abcdefgh.tmp"
    staging.mkdir()
    shutil.copytree(previous, staging, dirs_exist_ok=True)  # as a run does first: old mtimes everywhere
    assert book.remove_stale_runs(tmp_path, "m") == [] and staging.is_dir()


def test_a_run_killed_between_its_renames_gets_its_previous_run_back(tmp_path):
    old = tmp_path / f".m.old-{_dead_pid()}"
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    book.remove_stale_runs(tmp_path, "m")
    assert (tmp_path / "m" / "metrics.json").is_file() and not old.exists()


def test_next_run_removes_what_a_killed_run_left(tmp_path, capsys):
    leftover = tmp_path / f".tiny__model.pid{_dead_pid()}.0a1b2c3d.tmp"
    leftover.mkdir()
    (leftover / "half.ipynb").write_text("{}")
    run(tmp_path, chapters=(Chapter("a_good"),))
    assert "removed 1 staging folder(s) left by interrupted runs" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["tiny__model"]


# --- --out ------------------------------------------------------------------------------------------

def test_out_that_is_a_file_or_unwritable_is_one_clear_line(tmp_path, capsys):
    afile = tmp_path / "file.txt"
    afile.write_text("keep")
    for out, message in ((afile, "is a file, not a folder"), (afile / "runs", "is a file, so no folder")):
        assert book.main(["run", "--model", "x", "--out", str(out), "--no-build"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --out ") and message in err and err.count("\n") == 1, err
    assert afile.read_text() == "keep" and sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(0o500)
        assert book.main(["run", "--model", "x", "--out", str(locked / "runs"), "--no-build"]) == 1
        assert "is not writable" in capsys.readouterr().err and list(locked.iterdir()) == []


def test_out_elsewhere_needs_no_build(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(book, "build_book", lambda **kw: pytest.fail("must not build"))
    assert book.main(["run", "--model", "x", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "the book renders book/runs only" in err and "add --no-build" in err
    assert list(tmp_path.iterdir()) == []


def test_runs_folder_is_resolved_against_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    target = run_chapters("tiny/model", out=Path("rel"), chapters=(Chapter("a_good"),), notebooks_dir=FIXTURES)
    assert target == tmp_path / "rel" / "tiny__model" and (target / "a.txt").is_file()


# --- published notebooks, dtype, progress -----------------------------------------------------------

EVERYTHING = dict(parameters="""
    model_name = "m"
    run_dir = "."
    dtype = "float32"
    quick = False
    labels = "a,b"
    """, body="""
    import json, time
    from pathlib import Path
    from emolib.progress import report
    for i in range(1, 4):
        report("fake stage", i, 3)
        time.sleep(0.4)
    Path(run_dir, "c.json").write_text(json.dumps({"labels": labels, "dtype": dtype}))
    print("wrote", Path(run_dir, "c.json"), "in", Path(run_dir).resolve().name)
    """)


def test_published_notebook_has_no_temporary_paths_and_hides_injected_parameters(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(book, "_PROGRESS_EVERY_S", 0.0)
    nbdir, out = tmp_path / "nb", tmp_path / "runs"
    write_chapter(nbdir, "c_all", **EVERYTHING)
    target = run_chapters("tiny/model", out=out, notebooks_dir=nbdir, chapters=(Chapter("c_all"),), dtype="bfloat16",
                          overrides=book.parse_params(["labels=0,0.1"]))
    assert json.loads((target / "c.json").read_text()) == {"labels": "0,0.1", "dtype": "bfloat16"}

    text = (target / "c_all.ipynb").read_text()
    assert ".tmp" not in text and not re.search(r"\.tiny__model\.pid\d+", text), "a staging path leaked"
    nb = json.loads(text)
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and "hide-input" in injected[0]["metadata"]["tags"]
    assert "remove-cell" not in injected[0]["metadata"]["tags"], "the values the run used stay on the page"
    assert 'run_dir = "tiny__model"' in "".join(injected[0]["source"]), "outside the repo: named by the folder"
    own = [c for c in nb["cells"] if "parameters" in c["metadata"].get("tags", [])]
    assert "remove-cell" not in own[0]["metadata"]["tags"], "the chapter's own parameters cell stays"
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "wrote tiny__model/c.json in tiny__model" in printed
    assert nb["metadata"]["papermill"]["input_path"] == "c_all.md"

    err = capsys.readouterr().err
    assert re.search(r"  \[c_all \d+:\d\d\] fake stage: 3/3\n", err), err
    assert re.search(r"emolib.book: c_all done in \d+:\d\d", err)
    assert not list(target.glob(".*")), "the progress file is not published"


def test_publish_names_the_run_folder_relative_to_the_repository(tmp_path):
    import nbformat

    staging = book.RUNS / ".m.pid12.0a1b2c3d.tmp"
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f'run_dir = "{staging}"', metadata={"tags": ["injected-parameters"]}),
        nbformat.v4.new_code_cell("print(1)", outputs=[nbformat.v4.new_output(
            "stream", name="stdout", text=f"{staging}/a.png book/runs/{staging.name}/b.png ../{staging.name}\n")]),
    ])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    book.publish_notebook(path, staging=staging, final=book.RUNS / "m")
    out = nbformat.read(path, as_version=4)
    assert out.cells[0].source == 'run_dir = "book/runs/m"'
    assert out.cells[0].metadata.tags == ["injected-parameters", "hide-input"]
    assert out.cells[1].outputs[0].text == "book/runs/m/a.png book/runs/m/b.png ../m\n"


def test_publish_names_the_cache_folder_by_its_variable(tmp_path, monkeypatch):
    """A run made with EMOLIB_CACHE=/tmp/... must not publish that machine's path (the committed runs did)."""
    import nbformat

    cache = tmp_path / "some-cache"
    monkeypatch.setenv("EMOLIB_CACHE", str(cache))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("load()", outputs=[nbformat.v4.new_output(
        "stream", name="stderr", text=f"emolib: converting m from GGUF to fp32 in {cache}/models/m-fp32\n")])])
    path = tmp_path / "x.ipynb"
    nbformat.write(nb, path)
    book.publish_notebook(path, staging=book.RUNS / ".m.pid1.0a1b2c3d.tmp", final=book.RUNS / "m")
    text = nbformat.read(path, as_version=4).cells[0].outputs[0].text
    assert text == "emolib: converting m from GGUF to fp32 in $EMOLIB_CACHE/models/m-fp32\n"


def test_auto_dtype_is_resolved_before_the_chapters_see_it(tmp_path, monkeypatch):
    """The chapters (and so the run keys) receive the dtype actually used, never the word "auto"."""
    from emolib import models

    nbdir = tmp_path / "nb"
    write_chapter(nbdir, "c_dt", parameters="""
        run_dir = "."
        dtype = "float32"
        """, body="""
        import json
        from pathlib import Path
        Path(run_dir, "d.json").write_text(json.dumps(dtype))
        """)
    for native, expected in ((True, "bfloat16"), (False, "float32")):
        monkeypatch.setattr(models, "native_bf16", lambda device="auto", _n=native: _n)
        target = run_chapters("tiny/model", out=tmp_path / f"runs-{native}", notebooks_dir=nbdir,
                              chapters=(Chapter("c_dt"),), dtype="auto")
        assert json.loads((target / "d.json").read_text()) == expected


def test_dtype_is_checked_and_offered_on_the_command_line(tmp_path, capsys):
    with pytest.raises(RunRefused, match="dtype 'float16' is not one of auto, float32, bfloat16"):
        run(tmp_path, dtype="float16")
    with pytest.raises(SystemExit):
        book.main(["run", "--dtype", "float16"])
    assert "invalid choice" in capsys.readouterr().err


def test_progress_report_appends_throttled_json_lines(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.report("idle", 1, 2)  # no listener: nothing happens, nothing fails
    path = tmp_path / "p.jsonl"
    monkeypatch.setenv(progress.ENV, str(path))
    for i in range(1, 101):
        progress.report("capture", i, 100)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(d["stage"], d["done"], d["total"]) for d in lines] == [("capture", 1, 100), ("capture", 100, 100)]
    assert set(lines[0]) == {"stage", "done", "total", "t"} and abs(lines[0]["t"] - time.time()) < 60

    follower = progress.Follower(path)
    assert [str(u) for u in follower.read()] == ["capture: 1/100", "capture: 100/100"]
    with open(path, "a") as fh:
        fh.write('{"stage": "x", "done": 1, "tot')  # a writer mid-line: not read yet
    assert follower.read() == []
    with open(path, "a") as fh:
        fh.write('al": 2, "t": 0}\n')
    assert [str(u) for u in follower.read()] == ["x: 1/2"]

    monkeypatch.setenv(progress.ENV, str(tmp_path / "missing" / "p.jsonl"))
    progress.report("capture", 1, 2)  # an unwritable file never fails the computation


def test_status_line_updates_in_place_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    line = progress.StatusLine("01_capture", stream=stream)
    line.tick([progress.Update("capture", 40, 160, 0.0)])
    line.close("emolib.book: 01_capture done in 0:01")
    assert stream.getvalue() == ("\r  [01_capture 0:00] capture: 40/160\x1b[K"
                                 "\r\x1b[Kemolib.book: 01_capture done in 0:01\n")
    assert progress.format_elapsed(151) == "2:31" and progress.format_elapsed(3725) == "1:02:05"


# --- data checks ------------------------------------------------------------------------------------

def test_data_check_runs_before_a_chapter_only_when_it_executes(tmp_path):
    calls = []
    checked = (Chapter("a_good", before=lambda: calls.append(1)),)
    run(tmp_path, chapters=checked)
    run(tmp_path, chapters=checked)
    assert calls == [1], "a reused chapter is not checked again"
    before = snapshot(tmp_path / "tiny__model")

    def failing():
        raise ChapterFailed("data check before 01_capture: bad story")

    with pytest.raises(ChapterFailed, match="bad story"):
        run(tmp_path, chapters=(Chapter("a_good", before=failing),), force=True)
    assert snapshot(tmp_path / "tiny__model") == before


def test_capture_chapter_checks_the_data(monkeypatch):
    from emolib import data

    assert book.CHAPTERS[0].name == "01_capture" and book.CHAPTERS[0].before is book.check_data_before_capture

    def bad(data_dir):
        raise data.DataError(data_dir / "stories" / "joy.jsonl", 3, None, "banned_word: 'joy'")

    monkeypatch.setattr(data, "check_data", bad)
    with pytest.raises(ChapterFailed, match=r"data check before 01_capture: .*joy.jsonl:3: banned_word"):
        book.check_data_before_capture()


# --- help ---------------------------------------------------------------------------------------------

def test_run_help_lists_chapters_flags_and_how_to_see_parameters(capsys):
    with pytest.raises(SystemExit) as info:
        book.main(["run", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for ch in book.CHAPTERS:
        assert ch.name in text
    for words in ("python -m emolib.book params", "--param selfreport_alphas=0.05,0.1", "a GPU when torch sees one",
                  "do not build the HTML book", "--dtype {auto,float32,bfloat16}", "hub id", "book/runs/<model>-quick/"):
        assert words in " ".join(text.split()), words


def test_params_command_prints_each_chapters_parameters(capsys):
    assert book.main(["params"]) == 0
    text = capsys.readouterr().out
    for ch in book.CHAPTERS:
        assert f"{ch.name}: " in text
    assert re.search(r"\n  selfreport_alphas +str +\"-0.2,[-0-9.,]+\" +--quick: \"-0.1,0.1\"", text)
    assert re.search(r"\n  batch_size +int +\d+", text)
    assert "set by the runner: model_name (--model), run_dir (--out)" in text
    assert book.main(["params", "--chapter", "03_geometry"]) == 0
    only = capsys.readouterr().out
    assert only.startswith("03_geometry: ") and "04_steering" not in only
    assert book.main(["params", "--chapter", "nope"]) == 1


def test_make_help_lists_the_targets():
    text = subprocess.run(["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for target in ("book", "book-quick", "test", "test-fast", "lab", "clean-book", "venv", "help"):
        assert re.search(rf"^  {re.escape(target)} +\S", text, re.M), target


def test_a_failed_swap_keeps_the_previous_run(tmp_path, monkeypatch):
    target = tmp_path / "m"
    target.mkdir()
    (target / "metrics.json").write_text("previous")
    real_replace = os.replace

    def replace(src, dst):
        if Path(src).name.endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(book.os, "replace", replace)
    with pytest.raises(OSError):
        with book._SignalGuard() as guard, book._staging(target, guard) as tmp:
            (tmp / "metrics.json").write_text("new")
    assert (target / "metrics.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "no staging or old copy left behind"


def test_a_signal_during_the_swap_leaves_no_old_copy(tmp_path):
    """A signal that arrives while the swap is held is raised on leaving it; the replaced run's copy
    must still be removed."""
    import contextlib

    target = tmp_path / "m"
    target.mkdir()
    (target / "metrics.json").write_text("previous")
    with pytest.raises(book.RunInterrupted):
        with book._SignalGuard() as guard, book._staging(target, guard) as tmp:
            (tmp / "metrics.json").write_text("new")
            held = guard.deferred

            @contextlib.contextmanager
            def deferred():
                with held():
                    yield
                    os.kill(os.getpid(), signal.SIGTERM)

            guard.deferred = deferred
    assert (target / "metrics.json").read_text() == "new", "the swap completed before the signal was raised"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"], "the replaced run's copy was removed"
