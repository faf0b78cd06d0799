"""The worker side shared by conversion and counting: a job's pieces as parsed blocks, with
the malformed-line policy, and the completion markers that make re-runs resume.

A job is one piece of a plain file, or every piece of a ``.gz`` file (read in one stream).
A piece is complete when its marker ``OUT/.convert/pieces/<stem>-part-NNNNN.json`` exists
(written last, atomically) and every file it lists exists with the size it records.

Line numbers in reports are 1-based physical lines of the input file. A piece knows the
lines before it when they were counted (a .gz stream, or a file cut into splits); otherwise
its reports carry piece-relative numbers that the driver makes absolute from the other
pieces' line counts, and ``--on-error=fail`` counts the newlines before the piece itself.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from compactrec.data.convert.criteo_tsv import BadLine, Columns, count_lines, parse_block
from compactrec.data.convert.parallel import Report
from compactrec.data.convert.text_input import Source, count_line_starts, read_gz, read_plain

MARKERS = ".convert"
MAX_EXAMPLES = 20  # bad lines kept per piece with their text


class MalformedLineError(ValueError):
    """``--on-error=fail``: the first malformed line, with its file and line number."""


@dataclass(frozen=True)
class PieceJob:
    src: Source
    piece: Optional[int]  # a plain file's piece; None: every piece of a .gz file
    out: str
    piece_bytes: int
    block_bytes: int
    on_error: str  # fail | skip
    skip: Tuple[int, ...] = ()  # .gz: pieces already complete (read through, not redone)
    line_bases: Optional[Tuple[int, ...]] = None  # lines before each piece, when counted


def piece_name(stem: str, piece: int) -> str:
    return f"{stem}-part-{piece:05d}"


def marker_path(out: str | Path, stem: str, piece: int) -> Path:
    return Path(out) / MARKERS / "pieces" / f"{piece_name(stem, piece)}.json"


def read_marker(out: str | Path, stem: str, piece: int, src_size: int) -> Optional[Dict[str, Any]]:
    """The piece's marker if the piece is complete (same input size, every file intact)."""
    path = marker_path(out, stem, piece)
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if marker.get("input_size") != src_size:
        return None
    for rel, size in marker.get("files", {}).items():
        try:
            if os.path.getsize(Path(out) / rel) != size:
                return None
        except OSError:
            return None
    return marker


class BadLines:
    """Malformed lines of one piece: raise at the first (fail) or count and keep examples."""

    def __init__(self, job: PieceJob, piece: int, line_base: Optional[int]) -> None:
        self.job, self.piece, self.line_base = job, piece, line_base
        self.count = 0
        self.examples: List[Tuple[int, str, str]] = []  # (line within the piece, reason, text)

    def add(self, bad: List[BadLine], lines_before: int) -> None:
        if not bad:
            return
        if self.job.on_error == "fail":
            first = bad[0]
            base = self.line_base
            if base is None:  # a plain file's piece: count the lines before it now
                base = count_line_starts(self.job.src.path, 0, self.piece * self.job.piece_bytes)
            line = base + lines_before + first.line
            raise MalformedLineError(
                f"{self.job.src.path}:{line}: {first.reason}: {first.text!r} (use --on-error=skip to drop such lines)"
            )
        self.count += len(bad)
        room = MAX_EXAMPLES - len(self.examples)
        self.examples += [(lines_before + b.line, b.reason, b.text) for b in bad[:room]]

    def to_json(self) -> Dict[str, Any]:
        return {"count": self.count, "examples": self.examples}


def iter_pieces(job: PieceJob, report: Report) -> Iterator[Tuple[int, Optional[int], Iterator[bytes]]]:
    """``(piece, lines before it or None, blocks of whole lines)`` for each piece to do."""
    src, s = job.src, job.piece_bytes
    if not src.gz:
        k = job.piece
        assert k is not None
        base = job.line_bases[k] if job.line_bases is not None else None
        yield k, base, _plain_blocks(job, k, report)
        return
    lines = 0
    stream = read_gz(src.path, s, job.block_bytes, progress=lambda n: report(n, 0))
    for piece, group in itertools.groupby(stream, key=lambda pb: pb[0]):
        counted = _Counted(b for _, b in group)
        if piece not in job.skip:
            yield piece, lines, iter(counted)
        for _ in counted:  # read through what was skipped or left unread
            pass
        lines += counted.lines


def _plain_blocks(job: PieceJob, k: int, report: Report) -> Iterator[bytes]:
    """A plain piece's blocks; progress in bytes of its byte range (sums to the file size)."""
    s = job.piece_bytes
    nominal, sent = max(0, min(job.src.size, (k + 1) * s) - k * s), 0
    for block in read_plain(job.src.path, k * s, (k + 1) * s, job.block_bytes):
        n = min(len(block), nominal - sent)
        report(n, 0)
        sent += n
        yield block
    report(nominal - sent, 0)


class _Counted:
    """Blocks that count their lines as they pass (a .gz stream's running line number)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self.blocks, self.lines = blocks, 0

    def __iter__(self) -> Iterator[bytes]:
        for block in self.blocks:
            self.lines += count_lines(block)
            yield block


def parsed(blocks: Iterator[bytes], bad: BadLines) -> Iterator[Tuple[Columns, int, int]]:
    """``(columns, lines before the block in the piece, block bytes)`` with bad lines handled."""
    lines = 0
    for block in blocks:
        if not block:  # a .gz piece in which no line starts
            continue
        cols = parse_block(block)
        bad.add(cols.bad, lines)
        yield cols, lines, len(block)
        lines += cols.lines


def file_marker_path(out: str | Path, stem: str) -> Path:
    return Path(out) / MARKERS / "files" / f"{stem}.json"


@dataclass
class Plan:
    """What is left to do: (source, piece or None for .gz, pieces to skip) per job."""

    todo: List[Tuple[Source, Optional[int], Tuple[int, ...]]]
    done: List[Dict[str, Any]]  # markers of complete pieces
    done_bytes: int  # input bytes they account for (progress)


def plan_jobs(sources: List[Source], out: str | Path, piece_bytes: int) -> Plan:
    """Skip complete pieces: a plain file's one by one, a .gz file's inside its single job."""
    plan = Plan([], [], 0)
    for src in sources:
        if not src.gz:
            for k in range(-(-src.size // piece_bytes)):
                m = read_marker(out, src.stem, k, src.size)
                if m is None:
                    plan.todo.append((src, k, ()))
                else:
                    plan.done.append(m)
                    plan.done_bytes += min(src.size, (k + 1) * piece_bytes) - k * piece_bytes
            continue
        found = sorted(int(p.stem.rsplit("-", 1)[1]) for p in (Path(out) / MARKERS / "pieces").glob(f"{src.stem}-part-*[0-9].json"))
        markers = {k: m for k in found if (m := read_marker(out, src.stem, k, src.size)) is not None}
        plan.done += markers.values()
        try:
            total = json.loads(file_marker_path(out, src.stem).read_text())
        except (OSError, ValueError):
            total = {}
        if total.get("input_size") == src.size and all(k in markers for k in range(total.get("pieces", -1))):
            plan.done_bytes += src.size
        else:
            plan.todo.append((src, None, tuple(sorted(markers))))
    return plan
