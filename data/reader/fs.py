"""Local paths and filesystem URIs behind one small API (the data root may be either).

A plain path (``data/criteo``) is read with the local filesystem as before; a URI
(``s3://bucket/criteo``, ``gs://...``, ``hdfs://host:8020/...``, ``file:///abs/path``) goes
through ``pyarrow.fs.FileSystem.from_uri``. One filesystem object is made per scheme and
host and then reused: for S3 ``from_uri`` may ask the network for the bucket's region, which
must not happen once per shard. Paths inside a data set are joined with ``/``.

Example::

    join("s3://b/criteo", "train/day_0-part-00000.parquet")  # 's3://b/criteo/train/day_0-...'
    pf = open_parquet("file:///tmp/d/train/part-00000.parquet")
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Dict, Optional, Tuple

import pyarrow.fs as pafs
import pyarrow.parquet as pq

_CACHE: Dict[Tuple[str, str], Tuple[pafs.FileSystem, bool]] = {}
_LOCK = threading.Lock()


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def join(root: str | Path, rel: str) -> str:
    """``root/rel`` for a local root (as ``Path`` joins) or a URI root (``/``-joined)."""
    if is_uri(root):
        return str(root).rstrip("/") + "/" + rel.lstrip("/")
    return str(Path(root) / rel)


def resolve(path: str | Path) -> Tuple[Optional[pafs.FileSystem], str]:
    """``(filesystem, path inside it)``; ``(None, path)`` for a local path."""
    path = str(path)
    if not is_uri(path):
        return None, path
    scheme, rest = path.split("://", 1)
    netloc, _, inner = rest.partition("/")
    key = (scheme.lower(), netloc)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            fs, resolved = pafs.FileSystem.from_uri(path)
            # s3/gs keep the bucket in the path ("bucket/key"); file/hdfs drop the host.
            cached = (fs, bool(netloc) and resolved.startswith(netloc))
            _CACHE[key] = cached
    fs, keeps_netloc = cached
    return fs, (f"{netloc}/{inner}" if keeps_netloc else "/" + inner)


def open_parquet(path: str | Path, **kwargs) -> pq.ParquetFile:
    """A ``ParquetFile`` for a local path or URI (errors propagate as pyarrow raises them)."""
    fs, inner = resolve(path)
    if fs is None:
        return pq.ParquetFile(inner, **kwargs)
    return pq.ParquetFile(fs.open_input_file(inner), **kwargs)


def read_text(path: str | Path) -> str:
    fs, inner = resolve(path)
    if fs is None:
        return Path(inner).read_text()
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def exists(path: str | Path) -> bool:
    fs, inner = resolve(path)
    if fs is None:
        return Path(inner).exists()
    return fs.get_file_info(inner).type != pafs.FileType.NotFound
