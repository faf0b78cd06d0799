"""A run's output: everything into RUN_DIR/log.txt, the readable part on the console.

Ray prints its own internals to the driver's console: C++ error lines of its core worker
("core_worker.cc: Actor ... has constructor arguments in the object store"), tracebacks of
its background threads (Ray Train's placement-group cleaner cannot pick between two local
clusters), its controller's progress lines, and ANSI colour codes even into files. None of it
is about the run, and a page of tracebacks reads as a failure. ``RunLog`` tees the process's
file descriptors 1 and 2 (so C++ output and child processes are caught too, not only
Python's ``print``): every line goes to the log file (colour codes and progress-bar redraws
removed), and the console gets the lines that ``ConsoleFilter`` keeps, with colour codes only
when it is a terminal. ``COMPACTREC_VERBOSE=1`` shows everything on the console.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from typing import Dict, List, Optional

ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")
# Ray prefixes every line a worker or actor prints: "(RayTrainWorker pid=123, ip=10.0.0.1) ".
RAY_PREFIX = re.compile(rb"^\((?:[\w.:]+ )?pid=[^)]*\) ?")
RAY_FRAME = re.compile(rb'File "[^"]*/site-packages/ray/')
STDLIB_FRAME = re.compile(rb'File "[^"]*/lib/python3\.\d+/(?!site-packages/)[^"]*"')
# C++ log lines of Ray's core worker / raylet: "[2026-12-01 18:40:44,926 E 10208 10238] core_worker.cc:2465: ..."
RAY_CPP = re.compile(rb"^\[\d{4}-\d\d-\d\d [\d:,]+ [EWI] \d+ \d+\] [\w/]+\.(?:cc|h):\d+:")
# Ray Train's controller narrating its worker group (the same facts are in metrics.json).
RAY_TRAIN_CHATTER = re.compile(
    rb"^(?:Requesting resources: |Attempting to start training worker group |Setting up process group for: "
    rb"|Started training worker group of size |- \(ip=[^)]*\) world_rank=)"
)


def _clean(line: bytes) -> bytes:
    """A line as it reads in a file: no colour codes, only the last redraw of a \\r line."""
    line = ANSI.sub(b"", line)
    if b"\r" in line.rstrip(b"\r\n"):
        body = line.rstrip(b"\r\n").split(b"\r")
        line = next((p for p in reversed(body) if p.strip()), b"") + b"\n"
    return line


class ConsoleFilter:
    """Decides, line by line, what reaches the console. A traceback is held until it ends
    and dropped only when every frame in it is inside Ray (a background thread of Ray's own);
    a traceback that passes through CompactRec or user code is always shown."""

    def __init__(self) -> None:
        self.block: List[bytes] = []

    def feed(self, line: bytes) -> List[bytes]:
        """The lines to show now (a held traceback comes out whole when it ends)."""
        text = RAY_PREFIX.sub(b"", _clean(line))
        if self.block:
            self.block.append(line)
            if text[:1] in (b" ", b"\t") or text.startswith(b"Traceback") or not text.strip():
                return []
            block, self.block = self.block, []  # the exception's own line ends the traceback
            return [] if _ray_internal(block) else block
        if text.startswith(b"Exception in thread ") or text.startswith(b"Traceback (most recent call last)"):
            self.block = [line]
            return []
        if RAY_CPP.match(text) or RAY_TRAIN_CHATTER.match(text):
            return []
        return [line]

    def flush(self) -> List[bytes]:
        block, self.block = self.block, []
        return block


def _ray_internal(block: List[bytes]) -> bool:
    """Every frame is Ray's or the standard library's (a thread's ``threading.py`` frames), and
    at least one is Ray's: no CompactRec or user code took part."""
    frames = [b for b in block if b'File "' in b]
    ray = [f for f in frames if RAY_FRAME.search(f)]
    return bool(ray) and all(RAY_FRAME.search(f) or STDLIB_FRAME.search(f) for f in frames)


class RunLog:
    """Tee fds 1 and 2 into ``path`` (appending) while the ``with`` block runs."""

    def __init__(self, path: str | Path, verbose: Optional[bool] = None) -> None:
        self.path = Path(path)
        self.verbose = bool(os.environ.get("COMPACTREC_VERBOSE")) if verbose is None else verbose
        self._saved: Dict[int, int] = {}
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()
        self._file = None

    def __enter__(self) -> "RunLog":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "ab")
        if not sys.stdout.isatty():
            os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # Ray colours worker prefixes unless told
        _flush_python()
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
            tty = os.isatty(self._saved[fd])
            r, w = os.pipe()
            os.dup2(w, fd)
            os.close(w)
            t = threading.Thread(target=self._pump, args=(r, self._saved[fd], tty), name=f"compactrec-log-{fd}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        _flush_python()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # closes this process's write end of the pipe: the pump sees EOF
        for t in self._threads:
            t.join(timeout=5)  # a child still holding the pipe open must not hang the run
        for saved in self._saved.values():
            os.close(saved)
        if self._file is not None:
            self._file.close()

    def _pump(self, r: int, console: int, tty: bool) -> None:
        keep = ConsoleFilter()
        pending = b""
        with os.fdopen(r, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self._emit(line + b"\n", console, tty, keep)
        tail = ([pending] if pending else [])
        for line in tail:
            self._emit(line, console, tty, keep)
        for line in keep.flush():
            self._show(line, console, tty)

    def _emit(self, line: bytes, console: int, tty: bool, keep: ConsoleFilter) -> None:
        with self._lock:
            self._file.write(_clean(line))
            self._file.flush()
        for shown in ([line] if self.verbose else keep.feed(line)):
            self._show(shown, console, tty)

    @staticmethod
    def _show(line: bytes, console: int, tty: bool) -> None:
        try:
            os.write(console, line if tty else _clean(line))
        except OSError:
            pass


def _flush_python() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


def append_log(path: str | Path, text: str) -> None:
    """Add ``text`` to a run's log file (the summary printed after the run has ended)."""
    with open(path, "a") as f:
        f.write(text if text.endswith("\n") else text + "\n")
