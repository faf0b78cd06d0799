"""Atomic file writes: write to a temporary name in the same folder, then rename.

A reader never sees a half-written file, and a crash leaves the previous version intact.
Files get the mode a plain ``open()`` would give (``0o666 & ~umask``, 0644 under umask 022):
``tempfile.mkstemp`` alone makes them 0600, which locks out the other users of a shared volume
(Ray pods as uid 1000, a head as another user; docs/stack.md).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0o022)  # the only portable read of the umask is to set it and put it back
    os.umask(mask)
    return mask


def temp_path(path: str | Path) -> str:
    """A new empty file beside ``path`` (same filesystem, so ``os.replace`` is atomic), with
    the mode that ``open()`` would give it under the current umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return tmp


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` over ``path`` (same filesystem)."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, _write)


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
