"""Run the book's chapters on a model through papermill, then build the Jupyter Book.

``python -m emolib.book run --model gemma-3-270m [--quick] [--out book/runs]`` executes each
chapter's MyST source (``notebooks/NN_name.md``) with its parameters into
``book/runs/<model>/NN_name.ipynb``. Chapters share files, not kernel state: each reads what the
previous one wrote into the same run folder. The run folder is replaced only when every chapter
succeeded, so a failing chapter leaves the previous good run untouched.

A chapter whose inputs are unchanged since its last run is reused, not re-executed: each run
folder keeps ``run_keys.json``, one key per chapter hashing the chapter source, its parameters,
the data files, the ``emolib`` code that computes (everything but this runner), the pinned
library versions and the previous chapter's key (chapters read what earlier ones wrote).
``--force`` re-executes everything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from emolib._io import atomic_dir

__all__ = ["ROOT", "CHAPTERS", "Chapter", "ChapterFailed", "run_chapters", "select_chapters", "parse_params",
           "check_parameters", "chapter_key", "inputs_fingerprint", "build_book", "main"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Chapter:
    name: str          # notebooks/<name>.md
    quick: tuple = ()  # extra (key, value) parameters for --quick runs


# In reading order; each chapter reads what the earlier ones wrote into the run folder.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01_capture"),
    Chapter("02_extraction"),
    Chapter("03_geometry", quick=(("n_shuffles", 2),)),
    Chapter("04_steering", quick=(("alphas", "0,0.1"), ("n_prompts", 1), ("max_new_tokens", 10),
                                  ("emotions", "calm,desperate"))),
    Chapter("05_behavior", quick=(("pref_per_item", 1), ("pref_emotions", "happy,calm,desperate"),
                                  ("ethics_emotions", "desperate,calm"), ("ethics_alpha_fractions", "-1,1"),
                                  ("ethics_limit", 6), ("n_monitor", 1))),
)


class ChapterFailed(RuntimeError):
    pass


def run_slug(model: str) -> str:
    """A folder name for a model name, hub id or path."""
    name = Path(model).name if Path(model).exists() else model.replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def chapter_parameters(nb_path: Path) -> dict[str, str]:
    """Parameter name -> the type name of its default, from the notebook's ``parameters`` cell."""
    import papermill

    import ast

    out = {}
    for name, info in papermill.inspect_notebook(str(nb_path)).items():
        try:
            out[name] = type(ast.literal_eval(info["default"])).__name__
        except (ValueError, SyntaxError):
            out[name] = "any"
    return out


_TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool}


def check_parameters(chapter: str, declared: dict[str, str], params: dict) -> None:
    """Every parameter must be declared by the chapter, and primitive of the declared type."""
    for key, value in params.items():
        if key not in declared:
            raise ChapterFailed(f"chapter {chapter}: unknown parameter {key!r}; it takes {sorted(declared)}")
        want = _TYPES.get(declared[key].split(" ")[0])
        ok = want is None or (isinstance(value, want) and not (want is not bool and isinstance(value, bool)))
        if not ok:
            raise ChapterFailed(f"chapter {chapter}: parameter {key!r} must be {declared[key]}, "
                                f"got {type(value).__name__} {value!r}")


KEYS_FILE = "run_keys.json"
_LIBRARIES = ("torch", "transformers", "transformer-lens", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib",
              "seaborn", "safetensors", "gguf")


def inputs_fingerprint(root: Path = ROOT) -> str:
    """A hash of everything besides a chapter and its parameters that can change its outputs: the data
    files, the computing ``emolib`` modules (the runner itself excluded) and the library versions."""
    from importlib import metadata

    h = hashlib.sha256()
    files = sorted((root / "data").rglob("*")) + sorted((root / "emolib").glob("*.py"))
    for path in files:
        if path.is_file() and path.name != "book.py":
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


def _read_keys(folder: Path) -> dict[str, str]:
    try:
        keys = json.loads((folder / KEYS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return keys if isinstance(keys, dict) else {}


def run_chapters(model: str, *, quick: bool = False, out: Path | None = None,
                 chapters: tuple[Chapter, ...] | None = None, device: str = "auto",
                 overrides: dict | None = None, notebooks_dir: Path | None = None, force: bool = False) -> Path:
    """Execute chapters into ``out/<model>`` (atomically) and return that folder.

    ``overrides`` sets chapter parameters (primitives only; each chapter receives the ones it
    declares). A chapter whose key (see the module docstring) matches the previous run's is reused
    unless ``force``. A failing chapter raises :class:`ChapterFailed` naming it, and the previous run
    folder is left exactly as it was.
    """
    import jupytext
    import papermill

    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else ROOT / "notebooks"
    overrides = dict(overrides or {})

    subset = chapters is not None
    chapters = CHAPTERS if chapters is None else chapters
    out = Path(out) if out is not None else ROOT / "book" / "runs"
    target = out / run_slug(model)
    stored = _read_keys(target)
    previous = {} if force else stored
    fingerprint = inputs_fingerprint()
    with atomic_dir(target, overwrite=True) as tmp:
        inputs = {}
        for ch in chapters:
            src = notebooks_dir / f"{ch.name}.md"
            if not src.is_file():
                raise ChapterFailed(f"unknown chapter {ch.name!r}: {src} does not exist")
            inputs[ch.name] = tmp / f".{ch.name}.input.ipynb"
            jupytext.write(jupytext.read(src), inputs[ch.name])
        declared = {name: chapter_parameters(path) for name, path in inputs.items()}
        unused = set(overrides) - set().union(*declared.values()) if declared else set(overrides)
        if unused:
            raise ChapterFailed(f"no chapter takes parameter(s) {sorted(unused)}")
        # A subset continues from the key of the chapter just before it in book order.
        order = [c.name for c in CHAPTERS]
        first = chapters[0].name
        upstream = stored.get(order[order.index(first) - 1], "") if subset and first in order[1:] else ""
        plan = []  # (chapter, parameters, key, reuse)
        reusing = True
        for ch in chapters:
            params = {"model_name": model, "run_dir": str(tmp), "device": device, "quick": quick}
            if quick:
                params.update(dict(ch.quick))
            params.update({k: v for k, v in overrides.items() if k in declared[ch.name]})
            params = {k: v for k, v in params.items() if k in declared[ch.name]}
            check_parameters(ch.name, declared[ch.name], params)
            key = chapter_key((notebooks_dir / f"{ch.name}.md").read_text(), params, fingerprint=fingerprint,
                              upstream=upstream)
            upstream = key
            # Reuse only an unbroken prefix: once a chapter runs again, everything after it does too.
            reusing = reusing and previous.get(ch.name) == key and (target / f"{ch.name}.ipynb").is_file()
            plan.append((ch, params, key, reusing))
        if target.is_dir() and (subset or plan[0][3]):
            # Earlier chapters' files stay available to the chapters that run again.
            shutil.copytree(target, tmp, dirs_exist_ok=True)
        keys = dict(stored) if subset else {}
        for ch, params, key, reuse in plan:
            nb_in = inputs[ch.name]
            if reuse:
                print(f"emolib.book: reusing {ch.name} on {model} (inputs unchanged since its last run)",
                      file=sys.stderr)
                nb_in.unlink(missing_ok=True)
                keys[ch.name] = key
                continue
            print(f"emolib.book: running {ch.name} on {model}{' (quick)' if quick else ''}", file=sys.stderr)
            try:
                papermill.execute_notebook(str(nb_in), str(tmp / f"{ch.name}.ipynb"), parameters=params,
                                           cwd=str(ROOT), kernel_name="python3", progress_bar=False)
            except papermill.PapermillExecutionError as exc:
                raise ChapterFailed(f"chapter {ch.name} failed on {model}: {exc.ename}: {exc.evalue}") from exc
            finally:
                nb_in.unlink(missing_ok=True)
            keys[ch.name] = key
        (tmp / KEYS_FILE).write_text(json.dumps(keys, indent=1, sort_keys=True) + "\n")
    return target


def parse_params(items: list[str]) -> dict:
    """``["batch_size=8", "variance=0.25"]`` -> ``{"batch_size": 8, "variance": 0.25}`` (literals or strings)."""
    import ast

    out = {}
    for item in items:
        if "=" not in item:
            raise ChapterFailed(f"--param {item!r}: expected NAME=VALUE")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            out[key.strip()] = raw
    return out


def build_book(*, strict: bool = True, output: Path | None = None) -> Path:
    """``jupyter-book build`` the repository root (warnings are errors when ``strict``); the HTML goes
    to ``output/_build/html`` (default: the repository's ``_build``). Returns the index page."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT)]
    if output is not None:
        cmd += ["--path-output", str(output)]
    if strict:
        cmd.append("-W")
    subprocess.run(cmd, check=True, cwd=ROOT)
    return Path(output or ROOT) / "_build" / "html" / "index.html"


def select_chapters(names: str | None) -> tuple[Chapter, ...] | None:
    """``"02_extraction,03_geometry"`` -> those chapters (in book order); None -> all."""
    if not names:
        return None
    known = {c.name: c for c in CHAPTERS}
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise ChapterFailed(f"unknown chapter(s) {unknown}; the chapters are {list(known)}")
    return tuple(c for c in CHAPTERS if c.name in wanted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.book", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every chapter on a model, then build the book")
    r.add_argument("--model", default="gemma-3-270m")
    r.add_argument("--quick", action="store_true", help="a small subset, for tests and a first look")
    r.add_argument("--out", type=Path, default=None, help="runs folder (default book/runs)")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-build", action="store_true")
    r.add_argument("--force", action="store_true", help="re-execute chapters even when their inputs are unchanged")
    r.add_argument("--chapters", default=None, help="comma-separated chapter names (default: all)")
    r.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="set a chapter parameter (repeatable), e.g. --param batch_size=8")
    sub.add_parser("build", help="build the book from the committed runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_chapters(args.model, quick=args.quick, out=args.out, device=args.device,
                         chapters=select_chapters(args.chapters), overrides=parse_params(args.param),
                         force=args.force)
            if args.no_build:
                return 0
        index = build_book()
    except (ChapterFailed, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"emolib.book: built {index}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
