"""``manifest.json`` of a checkpoint: every file with its size and digest, in plain JSON.

Written at save time after every rank's files are in the folder; checked before anything in
the folder is loaded. Reading and checking it never unpickles anything, so a folder of
unknown origin can be judged safely; only a folder whose files match it is handed to the
loader (``trainer/checkpoint.py``, ``trainer/dcp_safe.py``)::

    {"format": "compactrec-checkpoint/1", "algorithm": "blake2b-256", "step": 1200,
     "files": {".metadata": {"size": 37913, "digest": "9f2c..."},
               "__0_0.distcp": {"size": 543937, "digest": "41aa..."}, ...}}

Names are relative paths inside the folder (``deepspeed/...`` included); ``manifest.json``
itself and the ``COMPLETE`` marker (written after it) are not listed. A file that is not
listed is never read. Hashing is split over ranks (``shares``): each hashes about 1/W of
the bytes, so a 100 GB checkpoint on 64 ranks costs each rank 1.5 GB of reading, at save
and at resume alike.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Optional, Sequence

from compactrec.io import atomic_write_json

MANIFEST = "manifest.json"
FORMAT = "compactrec-checkpoint/1"
ALGORITHM = "blake2b-256"  # blake2b: faster than sha256 on CPUs without SHA instructions
CHUNK = 8 << 20  # bytes read at a time while hashing
UNLISTED = frozenset({MANIFEST, "COMPLETE"})

Entry = Dict[str, Any]  # {"size": int, "digest": str}
Check = Callable[[str, Path], Optional[str]]  # (name, path) -> problem, for content checks


class CheckpointError(ValueError):
    """A checkpoint cannot be used; the message names the folder and the file."""


def digest_file(path: Path, size: Optional[int] = None) -> str:
    """blake2b-256 of a file, streamed in ``CHUNK`` pieces (at most ``size`` bytes read)."""
    h = hashlib.blake2b(digest_size=32)
    left = size if size is not None else -1
    with open(path, "rb") as f:
        while left != 0:
            chunk = f.read(CHUNK if left < 0 else min(CHUNK, left))
            if not chunk:
                break
            h.update(chunk)
            left -= len(chunk) if left > 0 else 0
    return h.hexdigest()


def digest_bytes(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def list_files(folder: Path) -> Dict[str, int]:
    """Every regular file under ``folder`` (relative POSIX name -> size), minus ``UNLISTED``."""
    out: Dict[str, int] = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            p = Path(dirpath) / name
            rel = p.relative_to(folder).as_posix()
            if rel not in UNLISTED:
                out[rel] = p.stat().st_size
    return dict(sorted(out.items()))


def shares(sizes: Dict[str, int], world: int) -> List[List[str]]:
    """Files split over ``world`` ranks, largest first to the least-loaded rank (the same
    answer on every rank: ties break by name and rank)."""
    load = [0] * world
    out: List[List[str]] = [[] for _ in range(world)]
    for name, size in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0])):
        r = min(range(world), key=lambda i: (load[i], i))
        out[r].append(name)
        load[r] += size
    return out


def hash_files(folder: Path, names: Sequence[str]) -> Dict[str, Entry]:
    return {n: {"size": (folder / n).stat().st_size, "digest": digest_file(folder / n)} for n in names}


def write_manifest(folder: Path, entries: Dict[str, Entry], step: int) -> Path:
    obj = {"format": FORMAT, "algorithm": ALGORITHM, "step": step, "files": dict(sorted(entries.items()))}
    return atomic_write_json(folder / MANIFEST, obj)


def _safe_name(name: Any) -> bool:
    """A relative path that stays inside the folder (a crafted manifest must not make us
    read /dev/zero or ../../secret)."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        return False
    p = PurePosixPath(name)
    return not p.is_absolute() and ".." not in p.parts and name not in UNLISTED


def read_manifest(folder: Path) -> Dict[str, Entry]:
    """The ``files`` of ``folder/manifest.json`` (JSON only), validated in shape.

    Raises:
        CheckpointError: missing (an older CompactRec's checkpoint, or not one at all: such
            a folder is refused, not unpickled), not JSON, another format, or a bad entry.
    """
    path = Path(folder) / MANIFEST
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{path}: missing; a checkpoint without CompactRec's manifest (an older version's, or not a "
            "checkpoint) is refused rather than unpickled"
        ) from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or obj.get("algorithm") != ALGORITHM:
        what = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{path}: format {what!r}, expected {FORMAT!r} with {ALGORITHM}")
    files = obj.get("files")
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{path}: no 'files' listed")
    for name, e in files.items():
        ok = (
            _safe_name(name) and isinstance(e, dict) and type(e.get("size")) is int and e["size"] >= 0
            and isinstance(e.get("digest"), str) and len(e["digest"]) == 64
        )
        if not ok:
            raise CheckpointError(f"{path}: bad entry {name!r}: {e!r}")
    return files


def quick_problem(folder: Path, files: Dict[str, Entry], required: Sequence[str]) -> Optional[str]:
    """Without reading any data: every listed file is a regular file of the listed size and
    the ``required`` names are listed. Returns the problem (naming the file) or None."""
    for name in required:
        if name not in files:
            return f"{name}: not in {MANIFEST}"
    for name, e in files.items():
        p = Path(folder) / name
        try:
            st = p.stat()
        except OSError:
            return f"{name}: missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{name}: not a regular file"
        if st.st_size != e["size"]:
            return f"{name}: {st.st_size} bytes, {MANIFEST} says {e['size']} (truncated or rewritten)"
    return None


def deep_problems(folder: Path, files: Dict[str, Entry], names: Sequence[str], check: Optional[Check] = None) -> List[str]:
    """Digest of each of ``names`` against the manifest, then ``check`` on the ones that
    match (content checks that need no trust: restricted unpickling, weights_only)."""
    out: List[str] = []
    for name in names:
        p = Path(folder) / name
        try:
            got = digest_file(p, files[name]["size"] + 1)  # one byte more: a grown file differs
        except OSError as e:
            out.append(f"{name}: unreadable ({e.strerror or e})")
            continue
        if got != files[name]["digest"]:
            out.append(f"{name}: checksum mismatch (its bytes changed after the checkpoint was written)")
            continue
        problem = check(name, p) if check is not None else None
        if problem:
            out.append(f"{name}: {problem}")
    return out
