"""Run the book's chapters on a model through papermill, then build the Jupyter Book.

``python -m emolib.book run --model gemma-3-270m [--quick] [--out book/runs]`` executes each
chapter's MyST source (``notebooks/NN_name.md``) with its parameters into
``book/runs/<model>/NN_name.ipynb``. Chapters share files, not kernel state: each reads what the
previous one wrote into the same run folder. The run folder is replaced only when every chapter
succeeded, so a failing chapter leaves the previous good run untouched.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from emolib._io import atomic_dir

__all__ = ["ROOT", "CHAPTERS", "Chapter", "ChapterFailed", "run_chapters", "build_book", "main"]

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Chapter:
    name: str          # notebooks/<name>.md
    quick: tuple = ()  # extra (key, value) parameters for --quick runs


# In reading order; each chapter reads what the earlier ones wrote into the run folder.
CHAPTERS: tuple[Chapter, ...] = (
    Chapter("01_capture"),
    Chapter("02_extraction"),
)


class ChapterFailed(RuntimeError):
    pass


def run_slug(model: str) -> str:
    """A folder name for a model name, hub id or path."""
    name = Path(model).name if Path(model).exists() else model.replace("/", "__")
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "model"


def run_chapters(model: str, *, quick: bool = False, out: Path | None = None,
                 chapters: tuple[Chapter, ...] | None = None, device: str = "auto") -> Path:
    """Execute chapters into ``out/<model>`` (atomically) and return that folder."""
    import jupytext
    import papermill

    chapters = CHAPTERS if chapters is None else chapters
    out = Path(out) if out is not None else ROOT / "book" / "runs"
    target = out / run_slug(model)
    with atomic_dir(target, overwrite=True) as tmp:
        for ch in chapters:
            src = ROOT / "notebooks" / f"{ch.name}.md"
            if not src.is_file():
                raise ChapterFailed(f"unknown chapter {ch.name!r}: {src} does not exist")
            nb_in = tmp / f".{ch.name}.input.ipynb"
            jupytext.write(jupytext.read(src), nb_in)
            params = {"model_name": model, "run_dir": str(tmp), "device": device, "quick": quick}
            if quick:
                params.update(dict(ch.quick))
            print(f"emolib.book: running {ch.name} on {model}{' (quick)' if quick else ''}", file=sys.stderr)
            try:
                papermill.execute_notebook(str(nb_in), str(tmp / f"{ch.name}.ipynb"), parameters=params,
                                           cwd=str(ROOT), kernel_name="python3", progress_bar=False)
            except papermill.PapermillExecutionError as exc:
                raise ChapterFailed(f"chapter {ch.name} failed on {model}: {exc.ename}: {exc.evalue}") from exc
            finally:
                nb_in.unlink(missing_ok=True)
    return target


def build_book(*, strict: bool = True) -> Path:
    """``jupyter-book build`` the repository root (warnings are errors when ``strict``)."""
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT)]
    if strict:
        cmd.append("-W")
    subprocess.run(cmd, check=True, cwd=ROOT)
    return ROOT / "_build" / "html" / "index.html"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emolib.book", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run every chapter on a model, then build the book")
    r.add_argument("--model", default="gemma-3-270m")
    r.add_argument("--quick", action="store_true", help="a small subset, for tests and a first look")
    r.add_argument("--out", type=Path, default=None, help="runs folder (default book/runs)")
    r.add_argument("--device", default="auto")
    r.add_argument("--no-build", action="store_true")
    sub.add_parser("build", help="build the book from the committed runs")
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            run_chapters(args.model, quick=args.quick, out=args.out, device=args.device)
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
