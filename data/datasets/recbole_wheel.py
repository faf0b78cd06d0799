"""MovieLens-100K's raw files, taken at run time from the ``recbole==1.2.1`` wheel on PyPI.

The MovieLens terms forbid redistribution, so the data is never committed: the wheel is
fetched with ``pip download --no-deps`` (nothing is installed), the three atomic files
under ``recbole/dataset_example/ml-100k/`` are read out of it with ``zipfile``, checked
against the SHA-256 digests below and cached per user (``cache_dir()``), so a second call
needs no network.

Example::

    folder = fetch_ml100k()          # ~/.cache/compactrec/recbole-1.2.1/ml-100k
    (folder / "ml-100k.inter").read_text().splitlines()[0]
    # 'user_id:token\\titem_id:token\\trating:float\\ttimestamp:float'
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, Optional

from compactrec.io import atomic_write

REQUIREMENT = "recbole==1.2.1"
MEMBER_DIR = "recbole/dataset_example/ml-100k/"
# Digests of the files inside recbole-1.2.1-py3-none-any.whl (checked on every fetch).
SHA256: Dict[str, str] = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}


class FetchError(RuntimeError):
    """The wheel could not be downloaded or does not hold the expected files."""


def cache_dir() -> Path:
    """``$COMPACTREC_CACHE``, else ``$XDG_CACHE_HOME/compactrec``, else ``~/.cache/compactrec``."""
    if os.environ.get("COMPACTREC_CACHE"):
        return Path(os.environ["COMPACTREC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "compactrec"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cached(folder: Path) -> bool:
    return all((folder / n).is_file() and _sha256(folder / n) == d for n, d in SHA256.items())


def download_wheel(dest: Path) -> Path:
    """``pip download recbole==1.2.1 --no-deps`` into ``dest``; the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", REQUIREMENT, "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"`{' '.join(cmd)}` failed: {e}") from None
    wheels = sorted(dest.glob("recbole-1.2.1-*.whl"))
    if r.returncode != 0 or not wheels:
        raise FetchError(f"`{' '.join(cmd)}` failed (exit {r.returncode}): {r.stderr.strip()[-800:]}")
    return wheels[0]


def extract(wheel: Path, folder: Path) -> None:
    """Copy the three ml-100k files out of ``wheel`` into ``folder``, verifying each digest."""
    try:
        with zipfile.ZipFile(wheel) as z:
            for name, digest in SHA256.items():
                data = z.read(MEMBER_DIR + name)
                got = hashlib.sha256(data).hexdigest()
                if got != digest:
                    raise FetchError(f"{wheel}!{MEMBER_DIR}{name}: sha256 {got}, expected {digest}")
                atomic_write(folder / name, lambda tmp, d=data: Path(tmp).write_bytes(d))
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise FetchError(f"{wheel}: not a recbole 1.2.1 wheel with {MEMBER_DIR} ({e})") from None


def fetch_ml100k(cache: Optional[Path] = None, wheel: Optional[Path] = None) -> Path:
    """The folder holding ``ml-100k.{inter,user,item}`` (verified), downloading once.

    Args:
        cache: cache root (default ``cache_dir()``); files land in ``cache/recbole-1.2.1/ml-100k``.
        wheel: an already downloaded ``recbole-1.2.1`` wheel to read instead of PyPI.
    Raises:
        FetchError: no network / no pip / a wheel without the expected files.
    """
    folder = (cache or cache_dir()) / "recbole-1.2.1" / "ml-100k"
    if _cached(folder):
        return folder
    if wheel is not None:
        extract(Path(wheel), folder)
    else:
        with tempfile.TemporaryDirectory(prefix="compactrec-recbole-") as tmp:
            extract(download_wheel(Path(tmp)), folder)
    return folder
