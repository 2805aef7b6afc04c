"""Atomic writes: a reader never sees a half-written file or directory.

Files and directories get ordinary permissions (``0o666`` and ``0o777`` less the umask), as
``open`` and ``mkdir`` would give them: :mod:`tempfile` creates private 0600/0700 entries, which
would make published runs unreadable to the other users of a shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "atomic_write_json", "atomic_dir"]

_ATTEMPTS = 100


def _create_sibling(path: Path, create: Callable[[Path], object]) -> tuple[Path, object]:
    """Create a fresh hidden sibling of ``path`` with ``create``, retrying on a name collision."""
    for _ in range(_ATTEMPTS):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return tmp, create(tmp)
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary sibling of {path} in {_ATTEMPTS} attempts")


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    tmp, fd = _create_sibling(path, lambda p: os.open(p, flags, 0o666))
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: object) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``path`` only if the body succeeds.

    On any exception the temporary directory is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp, _ = _create_sibling(path, lambda p: p.mkdir(0o777))
    try:
        yield tmp
        if path.exists():
            if not overwrite:
                raise FileExistsError(f"{path} already exists")
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
