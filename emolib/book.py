"""Run the book's chapters on a model through papermill, then build the Jupyter Book.

``python -m emolib.book run --model gemma-3-270m [--quick] [--out book/runs]`` executes each
chapter's MyST source (``notebooks/NN_name.md``) with its parameters into
``book/runs/<model>/NN_name.ipynb`` (a ``--quick`` run into ``book/runs/<model>-quick/``, which the
book never shows). Chapters share files, not kernel state: each reads what the previous one wrote
into the same run folder. The run is staged in a hidden sibling folder that replaces the run folder
only when every chapter succeeded, so a failing or interrupted run (Ctrl-C, or SIGTERM as
``timeout`` sends) leaves the previous good run untouched; the next run removes staging folders
whose owner is gone.

A chapter whose inputs are unchanged since its last run is reused, not re-executed: each run
folder keeps ``run_keys.json``, one key per chapter hashing the chapter source, its parameters,
the data files, the ``emolib`` code that computes (everything but this runner and the progress
display), the pinned library versions, whether the models run compiled (``EMOLIB_COMPILE``; it
changes their rounding) and the previous chapter's key (chapters read what earlier ones wrote); it
also records whether the run is a quick one, and a run never mixes quick and full chapters in one
folder. ``--force`` re-executes everything.

The executed notebooks are published as they will be read: the staging folder's path is replaced
by the run folder's, and papermill's injected-parameters cell is collapsed (``hide-input``). While a
chapter runs, the terminal shows its elapsed time and the progress that ``emolib`` code reports
through :mod:`emolib.progress`.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from emolib import progress

__all__ = ["ROOT", "RUNS", "NOTEBOOKS", "CHAPTERS", "DTYPES", "RESERVED", "Chapter", "BookError", "RunRefused",
           "ChapterFailed", "RunInterrupted", "ParamText", "run_chapters", "run_slug", "run_folder",
           "select_chapters", "parse_params", "coerce_param", "chapter_parameters", "parameter_table",
           "check_parameters", "describe_parameters", "chapter_key", "inputs_fingerprint", "remove_stale_runs",
           "publish_notebook", "check_data_before_capture", "build_book", "main"]

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "book" / "runs"
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_MODEL = "gemma-3-270m"
# "auto": bfloat16 where the device computes it natively (a CPU with AVX-512 BF16 or AMX, CUDA), float32
# elsewhere. It is resolved before anything runs, so chapters and run keys record the dtype actually used.
DTYPES = ("auto", "float32", "bfloat16")
# Parameters the runner sets from its own flags; a --param for one of them is refused, naming the flag.
RESERVED = {"model_name": "--model", "run_dir": "--out", "device": "--device", "dtype": "--dtype", "quick": "--quick"}
QUICK_SUFFIX = "-quick"
PROGRESS_FILE = ".progress.jsonl"
STALE_AFTER_S = 24 * 3600
_PROGRESS_EVERY_S = 30.0  # non-terminal output: at most one progress line this often
_STOP_KERNEL_S = 20.0


class BookError(RuntimeError):
    """A run that could not be done; the one-line message says what to change."""


class RunRefused(BookError):
    """Refused before anything ran or was written: a wrong chapter, parameter, flag or folder."""


class ChapterFailed(BookError):
    """A chapter failed (or its pre-check did); the previous run folder is untouched."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM during a run. ``saved`` is True when it came after the new run replaced the old one."""

    def __init__(self, signum: int, *, saved: bool = False):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.saved = signum, saved

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def check_data_before_capture() -> None:
    """Refuse to capture a corpus that fails the data checks: the capture takes minutes and would be wrong."""
    from emolib import data

    try:
        data.check_data(data.DATA_DIR)
    except data.DataError as exc:
        raise ChapterFailed(f"data check before 01_capture: {exc}") from None


@dataclass(frozen=True)
class Chapter:
    name: str                                  # notebooks/<name>.md
    quick: tuple = ()                          # extra (key, value) parameters for --quick runs
    before: Callable[[], None] | None = None   # runs just before the chapter executes (not when reused)


# In reading order; each chapter reads what the earlier ones wrote into the run folder.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01_capture", before=check_data_before_capture),
    Chapter("02_extraction"),
    Chapter("03_geometry"),
    # quick: a smaller design with the same structure (the quick run checks the pipeline, not the result)
    Chapter("04_steering", quick=(("selfreport_alphas", "-0.1,0.1"), ("n_contexts", 1), ("n_null", 4),
                                  ("tone_alphas", "-0.05,0.05"), ("n_tone_prompts", 4), ("n_tone_null", 2),
                                  ("max_new_tokens", 12))),
    Chapter("05_behavior", quick=(("n_controls", 30), ("pref_per_item", 1), ("pref_emotions", "happy,calm,desperate,hostile"),
                                  ("n_random", 3), ("n_boot", 50), ("ethics_emotions", "desperate,calm"),
                                  ("ethics_alpha_fractions", "-1,1"), ("ethics_limit", 6), ("n_monitor", 1))),
)


def run_slug(model: str) -> str:
    """A folder name for a model name, hub id or path."""
    name = Path(model).name if Path(model).exists() else model.replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def run_folder(model: str, *, quick: bool = False) -> str:
    """The run folder's name: quick runs get their own, so they never replace or mix with a full run."""
    return run_slug(model) + (QUICK_SUFFIX if quick else "")


# --- chapters and their parameters -------------------------------------------------------------

def _read_notebook(path: Path) -> Any:
    import jupytext

    return jupytext.read(path)


def _chapter_sources(chapters: tuple[Chapter, ...], notebooks_dir: Path) -> dict[str, tuple[Path, Any]]:
    out = {}
    for ch in chapters:
        src = notebooks_dir / f"{ch.name}.md"
        if not src.is_file():
            raise RunRefused(f"unknown chapter {ch.name!r}: {src} does not exist")
        out[ch.name] = (src, _read_notebook(src))
    return out


def parameter_table(notebook: Any) -> dict[str, dict[str, str]]:
    """Parameter name -> ``{"type", "default", "help"}`` from a notebook's ``parameters`` cell
    (a notebook object or a path to an ``.md``/``.ipynb``); the type is that of the default."""
    import papermill

    nb = _read_notebook(Path(notebook)) if isinstance(notebook, (str, Path)) else notebook
    out = {}
    for name, info in papermill.inspect_notebook(nb).items():
        try:
            kind = type(ast.literal_eval(info["default"])).__name__
        except (ValueError, SyntaxError):
            kind = "any"
        out[name] = {"type": kind, "default": info["default"], "help": info.get("help") or ""}
    return out


def chapter_parameters(notebook: Any) -> dict[str, str]:
    """Parameter name -> the type name of its default, from the notebook's ``parameters`` cell."""
    return {name: info["type"] for name, info in parameter_table(notebook).items()}


class ParamText(str):
    """A ``--param`` value as typed: read as a Python literal for typed parameters, kept as text for
    ``str`` ones (so ``alphas=0,0.1`` stays the text ``"0,0.1"``, not a tuple)."""


def parse_params(items: list[str]) -> dict[str, ParamText]:
    """``["batch_size=8", "alphas=0,0.1"]`` -> ``{"batch_size": "8", "alphas": "0,0.1"}`` as
    :class:`ParamText`, typed per chapter by :func:`coerce_param`."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise RunRefused(f"--param {item!r}: expected NAME=VALUE, e.g. --param batch_size=8")
        out[key] = ParamText(raw)
    return out


def coerce_param(value: Any, declared: str) -> Any:
    """A :class:`ParamText` as the chapter's declared type wants it; other values unchanged."""
    if not isinstance(value, ParamText):
        return value
    text = str(value)
    try:
        literal = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        literal = text
    if declared == "str":
        # '"calm"' is the string calm; anything else (0,0.1 or 0.2) is meant as written.
        return literal if isinstance(literal, str) else text
    return literal


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}
_PRIMITIVES = (str, int, float, bool, type(None))


def _describe(declared: dict[str, str]) -> str:
    shown = [f"{k}: {t}" for k, t in declared.items() if k not in RESERVED]
    return ", ".join(shown) or "no parameters"


def check_parameters(chapter: str, declared: dict[str, str], params: dict) -> None:
    """Every parameter must be declared by the chapter, and primitive of the declared type."""
    for key, value in params.items():
        if key not in declared:
            raise RunRefused(f"chapter {chapter}: unknown parameter {key!r}; it takes {_describe(declared)}")
        want = _TYPES.get(declared[key].split(" ")[0])
        ok = isinstance(value, _PRIMITIVES) and (
            want is None or (isinstance(value, want) and not (want is not bool and isinstance(value, bool))))
        if not ok:
            raise RunRefused(f"chapter {chapter}: parameter {key!r} must be {declared[key]}, "
                             f"got {type(value).__name__} {value!r}")


def _refuse_reserved(overrides: dict) -> None:
    for key in overrides:
        if key in RESERVED:
            raise RunRefused(f"parameter {key!r} is set by the runner; use {RESERVED[key]} instead of --param")


def _refuse_unused(overrides: dict, declared: dict[str, dict[str, str]]) -> None:
    unused = [k for k in overrides if not any(k in d for d in declared.values())]
    if unused:
        merged: dict[str, set[str]] = {}
        for d in declared.values():
            for k, t in d.items():
                merged.setdefault(k, set()).add(t)
        takes = _describe({k: "|".join(sorted(ts)) for k, ts in merged.items()})
        raise RunRefused(f"no chapter takes parameter(s) {unused}; these chapters take {takes} "
                         f"('python -m emolib.book params' lists them by chapter)")


def describe_parameters(chapters: tuple[Chapter, ...] | None = None, *, notebooks_dir: Path | None = None) -> str:
    """Each chapter's parameters with their types, defaults and ``--quick`` values, as text."""
    chapters = CHAPTERS if chapters is None else chapters
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS
    blocks = []
    for name, (src, nb) in _chapter_sources(chapters, notebooks_dir).items():
        table = parameter_table(nb)
        quick = dict(next(c for c in chapters if c.name == name).quick)
        rows = [(k, v["type"], v["default"], (f"--quick: {json.dumps(quick[k])}" if k in quick else "")
                 + (f"  # {v['help']}" if v["help"] else "")) for k, v in table.items() if k not in RESERVED]
        w = [max((len(r[i]) for r in rows), default=0) for i in range(3)]
        lines = [f"{name}: {_chapter_title(src)}"]
        lines += [f"  {k:<{w[0]}}  {t:<{w[1]}}  {d:<{w[2]}}  {x}".rstrip() for k, t, d, x in rows]
        reserved = [f"{k} ({RESERVED[k]})" for k in table if k in RESERVED]
        if reserved:
            lines.append("  set by the runner: " + ", ".join(reserved))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _chapter_title(src: Path) -> str:
    """The chapter's first heading without its number ("Capture: what the model ...")."""
    try:
        for line in src.read_text(encoding="utf-8").splitlines():
            if line.startswith("# "):
                return re.sub(r"^\d+\.\s*", "", line[2:].strip())
    except OSError:
        pass
    return ""


def select_chapters(names: str | None) -> tuple[Chapter, ...] | None:
    """``"02_extraction,03_geometry"`` -> those chapters (in book order); None -> all."""
    if names is None:
        return None
    known = {c.name: c for c in CHAPTERS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted:
        raise RunRefused(f"--chapters {names!r} names no chapter; the chapters are {', '.join(known)}")
    twice = sorted({n for n in wanted if wanted.count(n) > 1})
    if twice:
        raise RunRefused(f"--chapters names {', '.join(twice)} more than once; name each chapter once")
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise RunRefused(f"unknown chapter(s) {unknown}; the chapters are {', '.join(known)}")
    return tuple(c for c in CHAPTERS if c.name in wanted)


def _check_chapter_list(chapters: tuple[Chapter, ...]) -> None:
    if not chapters:
        raise RunRefused("no chapters to run; name at least one with --chapters")
    names = [c.name for c in chapters]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise RunRefused(f"chapter(s) {', '.join(twice)} given more than once; name each chapter once")


# --- run keys -----------------------------------------------------------------------------------

KEYS_FILE = "run_keys.json"
_MODE_KEY = "quick"  # in run_keys.json next to the chapter keys: was this a --quick run
_LIBRARIES = ("torch", "transformers", "transformer-lens", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
              "seaborn", "safetensors", "gguf")
# Modules that cannot change a chapter's outputs: editing them must not invalidate every run.
_NOT_HASHED = {"book.py", "progress.py"}
# Stories being written for a later corpus (data/drafts/): no chapter reads them until they are merged.
_DRAFTS = "drafts"


def inputs_fingerprint(root: Path = ROOT) -> str:
    """A hash of everything besides a chapter and its parameters that can change its outputs: the data
    files (drafts under ``data/drafts/`` excluded), the computing ``emolib`` modules (the runner and
    progress display excluded) and the library versions."""
    from importlib import metadata

    h = hashlib.sha256()
    data = [p for p in sorted((root / "data").rglob("*")) if p.relative_to(root / "data").parts[0] != _DRAFTS]
    files = data + sorted((root / "emolib").glob("*.py"))
    for path in files:
        if path.is_file() and not (path.parent.name == "emolib" and path.name in _NOT_HASHED):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    for lib in _LIBRARIES:
        try:
            h.update(f"{lib}=={metadata.version(lib)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{lib}==absent".encode())
    return h.hexdigest()


def chapter_key(source: str, params: dict, *, fingerprint: str, upstream: str = "") -> str:
    """The reuse key of one chapter execution (``run_dir`` excluded: it is a temporary folder)."""
    shown = {k: v for k, v in sorted(params.items()) if k != "run_dir"}
    blob = json.dumps({"source": source, "params": shown, "inputs": fingerprint, "upstream": upstream},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _read_json(path: Path) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _read_keys(folder: Path) -> dict[str, str]:
    """Chapter name -> key of the run in ``folder`` (empty when there is none)."""
    return {k: v for k, v in _read_json(folder / KEYS_FILE).items() if isinstance(v, str)}


def _folder_mode(folder: Path) -> bool | None:
    """Whether the run in ``folder`` is a quick one; None when there is no run or it cannot tell."""
    recorded = _read_json(folder / KEYS_FILE).get(_MODE_KEY)
    if isinstance(recorded, bool):
        return recorded
    # Runs made before the mode was recorded: their chapters wrote it into metrics.json.
    written = _read_json(folder / "metrics.json").get("quick")
    return written if isinstance(written, bool) else None


def _previous_keys(target: Path, *, quick: bool, force: bool) -> tuple[dict[str, str], bool]:
    """The chapter keys of the run in ``target`` and whether its files may be built on."""
    mode = _folder_mode(target)
    if mode is None or mode == quick:
        return _read_keys(target), True
    if not force:
        kind = {True: "quick", False: "full"}
        raise RunRefused(f"{target} holds a {kind[mode]} run and this is a {kind[quick]} one; a run folder never "
                         f"mixes the two: add --force to replace it, or choose another --out")
    return {}, False


def _write_keys(folder: Path, keys: dict[str, str], *, quick: bool) -> None:
    (folder / KEYS_FILE).write_text(json.dumps({**keys, _MODE_KEY: quick}, indent=1, sort_keys=True) + "\n")


# --- run folders --------------------------------------------------------------------------------

def _runs_folder(out: Path | str | None) -> Path:
    """The absolute folder that holds the run folders, refused (nothing written) unless it is usable."""
    out = (Path(out).expanduser() if out is not None else RUNS).resolve()
    if out.exists() and not out.is_dir():
        raise RunRefused(f"--out {out} is a file, not a folder; give the folder that holds the runs")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise RunRefused(f"--out {out}: {probe} is a file, so no folder can be made there; give another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunRefused(f"--out {out}: {probe} is not writable; give a folder you can write to")
    return out


def _staging_pattern(name: str) -> re.Pattern:
    # Ours name the owning pid; atomic_dir's (earlier runners) and the .old- folders of a replacement
    # in progress are recognised too.
    esc = re.escape(name)
    return re.compile(rf"\.{esc}\.(?:pid(?P<pid>\d+)\.[0-9a-f]+\.tmp|(?P<legacy>[a-z0-9_]{{8}})\.tmp|old-(?P<old>\d+))")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _last_touched(folder: Path) -> float:
    """When anything in ``folder`` last changed. ctime as well as mtime: copytree stamps copied folders
    with their source's old mtime, and a staging folder starts as a copy of the previous run."""
    newest = 0.0
    for dirpath, _, files in os.walk(folder):
        for p in (dirpath, *(os.path.join(dirpath, f) for f in files)):
            with contextlib.suppress(OSError):
                st = os.lstat(p)
                newest = max(newest, st.st_mtime, st.st_ctime)
    return newest


def remove_stale_runs(out: Path, name: str, *, max_age_s: float = STALE_AFTER_S) -> list[Path]:
    """Remove the staging folders of run ``name`` in ``out`` that interrupted runs left behind: those whose
    owning process is gone, or that nothing touched for ``max_age_s`` (no owner recorded, or its pid
    reused since). A running run's folders are kept: papermill saves its notebook after every cell.
    Returns what was removed (or restored)."""
    if not out.is_dir():
        return []
    pattern, target, now = _staging_pattern(name), out / name, time.time()
    done = []
    for path in sorted(out.iterdir()):
        m = pattern.fullmatch(path.name)
        if m is None or path.is_symlink() or not path.is_dir():
            continue
        pid = m["pid"] or m["old"]
        if pid is not None:
            # An owner that is alive is never overruled by age: a single cell may run for a day.
            if _pid_alive(int(pid)):
                continue
        elif now - _last_touched(path) <= max_age_s:
            continue  # no owner recorded (an earlier runner's folder): only age tells
        if m["old"] and not target.exists():
            os.replace(path, target)  # it died between its two renames: this is the previous run, put it back
        else:
            shutil.rmtree(path, ignore_errors=True)
        done.append(path)
    return done


class _SignalGuard:
    """While active (in the main thread), SIGINT and SIGTERM raise :class:`RunInterrupted` once, so that
    cleanup code runs as for Ctrl-C; later signals are ignored so that the cleanup is not cut short."""

    def __init__(self):
        self.fired: int | None = None
        self.saved = False
        self._deferring = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.fired is not None:
            return
        self.fired = signum
        if not self._deferring:
            raise RunInterrupted(signum, saved=self.saved)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal inside takes effect only at the end: the two renames of a commit are never split."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self.fired is not None:
            raise RunInterrupted(self.fired, saved=self.saved)


def _make_staging(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        tmp = target.with_name(f".{target.name}.pid{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            tmp.mkdir(0o777)  # ordinary permissions (umask), not mkdtemp's 0700: runs are shared
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a staging folder next to {target}")


@contextlib.contextmanager
def _staging(target: Path, guard: _SignalGuard) -> Iterator[Path]:
    """A hidden sibling of ``target`` that replaces it only if the body succeeds; always removed after."""
    try:
        tmp = _make_staging(target)
    except OSError as exc:
        raise RunRefused(f"cannot create a run folder in {target.parent}: {exc.strerror or exc}; "
                         f"choose another --out") from None
    try:
        yield tmp
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        try:
            with guard.deferred():
                shutil.rmtree(old, ignore_errors=True)
                if target.exists():
                    os.replace(target, old)
                try:
                    os.replace(tmp, target)
                except OSError:
                    if old.exists() and not target.exists():
                        os.replace(old, target)  # the new run could not take its place: keep the old one
                    raise
                guard.saved = True
        finally:
            # Also when a signal held during the swap is raised on leaving it: the old run is a full copy.
            if target.exists():
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --- executing one chapter ----------------------------------------------------------------------

_KERNELS: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def _tracked_kernel_manager() -> type:
    from jupyter_client.manager import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        """Registers itself, so that an interrupted run can stop its kernel from the main thread."""

        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            _KERNELS.add(self)

    return TrackedKernelManager


def _kill_kernels(keep: set) -> None:
    for km in list(_KERNELS):
        if km in keep:
            continue
        prov = getattr(km, "provisioner", None)
        pgid, pid = getattr(prov, "pgid", None), getattr(prov, "pid", None)
        try:
            # Kernels start in their own session; the group takes any processes the chapter started.
            if pgid and pgid != os.getpgrp():
                os.killpg(pgid, signal.SIGKILL)
            elif pid:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@contextlib.contextmanager
def _environ(key: str, value: str) -> Iterator[None]:
    before = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


@contextlib.contextmanager
def _quiet(logger: str) -> Iterator[None]:
    import logging

    log = logging.getLogger(logger)
    before, log.disabled = log.disabled, True
    try:
        yield
    finally:
        log.disabled = before


def _execute(nb: Any, output: Path, params: dict, *, label: str, progress_file: Path) -> None:
    """Execute ``nb`` into ``output`` with papermill.

    The kernel is driven from a worker thread, so this (main) thread stays free to show progress and
    to receive signals: nbclient's own handlers, which it installs only in the main thread, would
    swallow SIGTERM. When this thread is interrupted, the kernel is killed before the interruption
    propagates.
    """
    import papermill

    failure: list[BaseException] = []
    known = set(_KERNELS)
    # Waited on instead of Thread.join: a join that a signal interrupts can leave the thread marked
    # as stopped while it still runs (CPython gh-90882).
    finished = threading.Event()

    def work() -> None:
        try:
            papermill.execute_notebook(nb, str(output), parameters=params, cwd=str(ROOT), kernel_name="python3",
                                       progress_bar=False, kernel_manager_class=_tracked_kernel_manager())
        except BaseException as exc:  # handed to the main thread
            failure.append(exc)
        finally:
            finished.set()

    status = progress.StatusLine(label, every_s=_PROGRESS_EVERY_S)
    follower = progress.Follower(progress_file)
    worker = threading.Thread(target=work, name=f"emolib.book {label}", daemon=True)
    # Set before the kernel starts: kernels inherit this process's environment.
    with _environ(progress.ENV, str(progress_file)):
        worker.start()
        try:
            while not finished.wait(0.25):
                status.tick(follower.read())
        except BaseException:
            status.clear()
            with _quiet("papermill"):  # it would log the kernel's death we cause, as an error
                deadline = time.monotonic() + _STOP_KERNEL_S
                while not finished.is_set() and time.monotonic() < deadline:
                    _kill_kernels(known)  # again each time: the kernel may still have been starting
                    finished.wait(0.2)
            raise
    status.tick(follower.read())
    if failure:
        status.close(f"emolib.book: {label} failed after {status.elapsed()}")
        raise failure[0]
    status.close(f"emolib.book: {label} done in {status.elapsed()}")


def _shown_path(folder: Path) -> str:
    """How a published notebook names a run folder: relative to the repository when inside it,
    else by its name alone (an absolute path outside would be a temporary or private one)."""
    try:
        return folder.relative_to(ROOT).as_posix()
    except ValueError:
        return folder.name


def _replace_strings(obj: Any, pairs: list[tuple[str, str]]) -> Any:
    if isinstance(obj, str):
        for old, new in pairs:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, list):
        return [_replace_strings(x, pairs) for x in obj]
    if isinstance(obj, dict):
        for k in list(obj):
            obj[k] = _replace_strings(obj[k], pairs)
    return obj


def publish_notebook(path: Path, *, staging: Path, final: Path, source: Path | None = None) -> None:
    """Rewrite an executed notebook as readers see it: every mention of the ``staging`` folder (absolute,
    relative to the repository, or by name) names ``final`` instead, the cache folder is named
    ``$EMOLIB_CACHE``, and papermill's injected-parameters
    cell is collapsed with ``hide-input`` (the chapter's own parameters cell shows only the defaults)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    shown = _shown_path(final)
    pairs = [(str(staging), shown)]
    rel = os.path.relpath(staging, ROOT)
    if rel != str(staging):
        pairs.append((rel, shown))
    pairs.append((staging.name, final.name))
    # The cache folder is the reader's own ($EMOLIB_CACHE); this machine's path says nothing to them.
    from emolib.models import cache_root

    pairs.append((str(cache_root()), "$EMOLIB_CACHE"))
    _replace_strings(nb, pairs)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags:
            # Collapsed, not removed: it is the only place a page shows the values this run used.
            cell.metadata["tags"] = [t for t in tags if t != "remove-cell"] + (
                [] if "hide-input" in tags else ["hide-input"])
    meta = nb.metadata.get("papermill")
    if meta is not None and source is not None:
        # papermill records the input notebook object itself when given one; name its source instead.
        source = source.resolve()
        meta["input_path"] = _shown_path(source) if source.is_relative_to(ROOT) else source.name
    nbformat.write(nb, path)


# --- the runner ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Step:
    chapter: Chapter
    source: Path
    notebook: Any
    params: dict
    key: str
    reuse: bool


def _compiled(device: str) -> bool:
    """Whether the chapters' models will run compiled (see :mod:`emolib.lean`): it changes their rounding,
    so it is part of every run key."""
    from emolib.lean import CompileUnavailable, resolve_compile
    from emolib.models import resolve_device

    try:
        return resolve_compile(None, device_type=resolve_device(device).type)
    except (CompileUnavailable, ValueError) as exc:
        raise RunRefused(str(exc)) from None


def _plan(chapters, sources, declared, *, model, quick, device, dtype, compiled, overrides, previous, stored,
          target, subset) -> list[_Step]:
    fingerprint = inputs_fingerprint() + (" compiled" if compiled else "")
    # A subset continues from the key of the chapter just before it in book order.
    order = [c.name for c in CHAPTERS]
    first = chapters[0].name
    upstream = stored.get(order[order.index(first) - 1], "") if subset and first in order[1:] else ""
    steps, reusing = [], True
    for ch in chapters:
        src, nb = sources[ch.name]
        mine = declared[ch.name]
        params = {"model_name": model, "device": device, "dtype": dtype, "quick": quick}
        if quick:
            params.update(dict(ch.quick))
        params.update({k: coerce_param(v, mine[k]) for k, v in overrides.items() if k in mine})
        params = {k: v for k, v in params.items() if k in mine}
        check_parameters(ch.name, mine, params)
        key = chapter_key(src.read_text(), params, fingerprint=fingerprint, upstream=upstream)
        upstream = key
        # Reuse only an unbroken prefix: once a chapter runs again, everything after it does too.
        reusing = reusing and previous.get(ch.name) == key and (target / f"{ch.name}.ipynb").is_file()
        steps.append(_Step(ch, src, nb, params, key, reusing))
    return steps


def _say(text: str) -> None:
    print(f"emolib.book: {text}", file=sys.stderr, flush=True)


def run_chapters(model: str, *, quick: bool = False, out: Path | None = None,
                 chapters: tuple[Chapter, ...] | None = None, device: str = "auto", dtype: str = DTYPES[0],
                 overrides: dict | None = None, notebooks_dir: Path | None = None, force: bool = False) -> Path:
    """Execute chapters into ``out/<model>`` (``out/<model>-quick`` when ``quick``) and return that folder.

    ``overrides`` sets chapter parameters (primitives, or :class:`ParamText` from the command line;
    each chapter receives the ones it declares; the runner's own, :data:`RESERVED`, are refused). A
    chapter whose key (see the module docstring) matches the previous run's is reused unless
    ``force``. Everything is checked before anything is written. A failing chapter raises
    :class:`ChapterFailed` naming it, an interruption :class:`RunInterrupted`; either way the previous
    run folder is left exactly as it was.
    """
    # From the start: Ctrl-C or SIGTERM at any point is a clean RunInterrupted.
    with _SignalGuard() as guard:
        notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else NOTEBOOKS
        subset = chapters is not None
        chapters = tuple(CHAPTERS if chapters is None else chapters)
        overrides = dict(overrides or {})
        _check_chapter_list(chapters)
        if dtype not in DTYPES:
            raise RunRefused(f"dtype {dtype!r} is not one of {', '.join(DTYPES)}")
        if dtype == "auto":
            from emolib.models import dtype_name, resolve_dtype

            dtype = dtype_name(resolve_dtype("auto", device=device))
        compiled = _compiled(device)
        _refuse_reserved(overrides)
        out = _runs_folder(out)
        target = out / run_folder(model, quick=quick)
        sources = _chapter_sources(chapters, notebooks_dir)
        declared = {name: chapter_parameters(nb) for name, (_, nb) in sources.items()}
        _refuse_unused(overrides, declared)
        stored, usable = _previous_keys(target, quick=quick, force=force)
        plan = _plan(chapters, sources, declared, model=model, quick=quick, device=device, dtype=dtype,
                     compiled=compiled, overrides=overrides, previous={} if force else stored, stored=stored,
                     target=target, subset=subset)
        # Everything above only reads; from here on the run writes.
        removed = remove_stale_runs(out, target.name)
        if removed:
            _say(f"removed {len(removed)} staging folder(s) left by interrupted runs of {target.name}")
        with _staging(target, guard) as tmp:
            if usable and target.is_dir() and (subset or plan[0].reuse):
                # Earlier chapters' files stay available to the chapters that run again.
                shutil.copytree(target, tmp, dirs_exist_ok=True)
            keys = dict(stored) if subset else {}
            for step in plan:
                _carry_out(step, tmp=tmp, target=target, model=model, quick=quick, declared=declared)
                keys[step.chapter.name] = step.key
            _write_keys(tmp, keys, quick=quick)
    return target


def _carry_out(step: _Step, *, tmp: Path, target: Path, model: str, quick: bool,
               declared: dict[str, dict[str, str]]) -> None:
    name = step.chapter.name
    if step.reuse:
        _say(f"reusing {name} on {model} (inputs unchanged since its last run)")
        return
    if step.chapter.before is not None:
        step.chapter.before()
    _say(f"running {name} on {model}{' (quick)' if quick else ''}")
    _run_step(step, tmp=tmp, target=target, model=model, declared=declared[name])


def _run_step(step: _Step, *, tmp: Path, target: Path, model: str, declared: dict[str, str]) -> None:
    import papermill
    from nbclient.exceptions import DeadKernelError

    name = step.chapter.name
    output = tmp / f"{name}.ipynb"
    params = dict(step.params)
    if "run_dir" in declared:
        params["run_dir"] = str(tmp)
    try:
        _execute(step.notebook, output, params, label=name, progress_file=tmp / PROGRESS_FILE)
    except papermill.PapermillExecutionError as exc:
        raise ChapterFailed(f"chapter {name} failed on {model}: {exc.ename}: {exc.evalue}") from exc
    except DeadKernelError as exc:
        raise ChapterFailed(f"chapter {name} failed on {model}: its kernel died ({exc}); "
                            f"out of memory? try a smaller batch_size") from exc
    finally:
        (tmp / PROGRESS_FILE).unlink(missing_ok=True)
    publish_notebook(output, staging=tmp, final=target, source=step.source)


def build_book(*, strict: bool = True, output: Path | None = None, root: Path = ROOT) -> Path:
    """``jupyter-book build`` the book at ``root`` (default: this repository; warnings are errors when
    ``strict``); the HTML goes to ``output/_build/html`` (default: ``root/_build``). Returns the index page."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(root)]
    if output is not None:
        cmd += ["--path-output", str(output)]
    if strict:
        cmd.append("-W")
    subprocess.run(cmd, check=True, cwd=root)
    return Path(output or root) / "_build" / "html" / "index.html"


# --- command line -------------------------------------------------------------------------------

def _chapter_list() -> str:
    width = max(len(c.name) for c in CHAPTERS)
    return "\n".join(f"  {c.name:<{width}}  {_chapter_title(NOTEBOOKS / f'{c.name}.md')}" for c in CHAPTERS)


_RUN_EPILOG = """\
parameters:
  python -m emolib.book params [--chapter NAME] lists each chapter's parameters, types and
  defaults. Set one with --param NAME=VALUE (repeatable); a text parameter takes what you type,
  e.g. --param selfreport_alphas=0.05,0.1. model_name, run_dir, device, dtype and quick come from --model,
  --out, --device, --dtype and --quick.

Ctrl-C or SIGTERM stops a run and leaves the previous one untouched (exit 130 or 143).
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m emolib.book", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,params,build}")
    r = sub.add_parser(
        "run", help="run the chapters on a model, then build the book",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_RUN_EPILOG,
        description="Run the book's chapters on a model into book/runs/<model>/, then build the HTML book.\n"
                    "A chapter whose inputs are unchanged since its last run is reused.\n\n"
                    "chapters, in book order (each reads what the earlier ones wrote):\n" + _chapter_list())
    r.add_argument("--model", default=DEFAULT_MODEL,
                   help="an embedded model (python -m emolib.models list), a Hugging Face hub id, a local model "
                        "folder or a .gguf file (default: %(default)s)")
    r.add_argument("--quick", action="store_true",
                   help="a small subset of every chapter, for a first look: into book/runs/<model>-quick/, "
                        "which the book never shows, so the book is not built")
    r.add_argument("--device", default="auto",
                   help="where the model runs: auto (a GPU when torch sees one, else the CPU), cpu, cuda, "
                        "cuda:1, mps (default: %(default)s)")
    r.add_argument("--dtype", choices=DTYPES, default=DTYPES[0],
                   help="the model's compute dtype (default: %(default)s = bfloat16 where the device runs it "
                        "natively, as CPUs with AVX-512 BF16 and CUDA GPUs do, else float32); statistics are "
                        "always accumulated in float32 or wider")
    r.add_argument("--chapters", default=None, metavar="NAME[,NAME...]",
                   help="run only these chapters (default: all); the others' files are kept from the last run")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a chapter parameter (repeatable), e.g. --param batch_size=8")
    r.add_argument("--force", action="store_true",
                   help="re-execute chapters even when their inputs are unchanged (and replace a run folder "
                        "of the other mode, quick or full)")
    r.add_argument("--out", type=Path, default=None, metavar="FOLDER",
                   help="the folder that holds the run folders (default: book/runs); the book renders only "
                        "book/runs, so another folder needs --no-build")
    r.add_argument("--no-build", action="store_true",
                   help="do not build the HTML book (_build/html) after the run")
    p = sub.add_parser("params", help="list each chapter's parameters, types and defaults")
    p.add_argument("--chapter", default=None, metavar="NAME", help="only this chapter")
    sub.add_parser("build", help="build the book from the committed runs (no chapter runs)")
    return parser


def _run_command(args: argparse.Namespace) -> int:
    overrides = parse_params(args.param)
    chapters = select_chapters(args.chapters)
    build = not (args.no_build or args.quick)
    if build and args.out is not None and _runs_folder(args.out) != RUNS:
        raise RunRefused(f"--out {args.out}: the book renders book/runs only, so building it would not show "
                         f"this run; add --no-build")
    target = run_chapters(args.model, quick=args.quick, out=args.out, device=args.device, dtype=args.dtype,
                          chapters=chapters, overrides=overrides, force=args.force)
    _say(f"run saved in {_shown_path(target) if target.is_relative_to(ROOT) else target}")
    if args.quick and not args.no_build:
        _say("not building the book: it never shows quick runs")
    if not build:
        return 0
    print(f"emolib.book: built {build_book()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "params":
            chapters = select_chapters(args.chapter) if args.chapter else None
            print(describe_parameters(chapters))
            return 0
        if args.command == "run":
            return _run_command(args)
        print(f"emolib.book: built {build_book()}")
        return 0
    except RunInterrupted as exc:
        print("interrupted after the run was saved; the book was not built" if exc.saved
              else "interrupted; the previous run is untouched", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BookError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"error: the book build failed (exit {exc.returncode}); its messages are above", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
