"""Raw text inputs cut into pieces: the unit of parallel work, of output shards, of resuming.

Piece k of an input holds the lines whose first byte lies in ``[k S, (k + 1) S)`` of the
(decompressed) text, S = ``piece_bytes``. A plain file's pieces are read independently: seek
to ``k S``, skip the line that began before it, read whole lines until the one that starts
before ``(k + 1) S`` is complete. A ``.gz`` file cannot be entered in the middle, so one
reader streams it and hands out each piece's lines in turn; pieces are defined on the
decompressed text, so ``day_0`` and ``day_0.gz`` give the same pieces. Either way the text
arrives in blocks of about ``block_bytes`` of whole lines: memory is bounded by a block, not
by the file. A "line" over ``MAX_LINE`` bytes means the input is not line-oriented text and
stops the read with an error naming the file and byte offset.
"""

from __future__ import annotations

import os
import re
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Callable, Iterator, List, Optional, Tuple

import numpy as np

MAX_LINE = 1 << 20


class TextError(ValueError):
    """The input is not line-oriented text (or cannot be read); names the file and offset."""


@dataclass(frozen=True)
class Source:
    path: str
    stem: str  # output name prefix: "day_3" for day_3 and day_3.gz, "train" for train.txt
    size: int  # bytes on disk (compressed size for .gz)
    gz: bool


def source(path: str) -> Source:
    name = os.path.basename(path)
    gz = name.endswith(".gz")
    stem = re.sub(r"\.(txt|tsv|csv)$", "", name[:-3] if gz else name)
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise TextError(f"{path}: cannot read ({e.strerror or e})") from None
    return Source(path, stem, size, gz)


def plain_piece_count(src: Source, piece_bytes: int) -> int:
    return -(-src.size // piece_bytes)


def _lines_until(buf: bytes, limit: int) -> int:
    """End (exclusive) of the last line of ``buf`` that starts before ``limit``; -1 if that
    line is not complete in ``buf`` yet."""
    nl = buf.find(b"\n", max(limit - 1, 0))
    return -1 if nl < 0 else nl + 1


def read_plain(path: str, start: int, stop: int, block_bytes: int) -> Iterator[bytes]:
    """Blocks of the whole lines whose first byte is in ``[start, stop)``."""
    with open(path, "rb") as f:
        pos = start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # inside a line that belongs to the previous piece
                skip = _skip_line(f, start, path)
                if skip is None:
                    return
                pos = skip
        if pos >= stop:
            return
        f.seek(pos)
        buf, buf_start = b"", pos
        while True:
            chunk = f.read(block_bytes)
            if not chunk:
                if buf:
                    yield buf  # the last line, without its newline
                return
            buf += chunk
            end = _lines_until(buf, stop - buf_start)
            if end >= 0:
                yield buf[:end]
                return
            last = buf.rfind(b"\n") + 1
            if last == 0 and len(buf) > MAX_LINE:
                raise TextError(f"{path}: no line end in {len(buf)} bytes after byte {buf_start}: not line-oriented text")
            if last:
                yield buf[:last]
                buf, buf_start = buf[last:], buf_start + last


def _skip_line(f: BinaryIO, pos: int, path: str) -> Optional[int]:
    """Position after the next newline at or after ``pos`` (None at end of file)."""
    f.seek(pos)
    scanned = 0
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            return None
        i = chunk.find(b"\n")
        if i >= 0:
            return pos + scanned + i + 1
        scanned += len(chunk)
        if scanned > MAX_LINE:
            raise TextError(f"{path}: no line end in {scanned} bytes after byte {pos}: not line-oriented text")


def count_line_starts(path: str, start: int, stop: int, block_bytes: int = 1 << 24) -> int:
    """Lines whose first byte is in ``[start, stop)`` of a plain file (newlines, counted)."""
    size = os.path.getsize(path)
    count = 1 if start == 0 and min(stop, size) > 0 else 0
    a, b = max(start - 1, 0), min(stop - 1, size - 1)  # a newline at q starts a line at q + 1
    with open(path, "rb") as f:
        f.seek(a)
        while a < b:
            chunk = f.read(min(block_bytes, b - a))
            if not chunk:
                break
            count += chunk.count(b"\n")
            a += len(chunk)
    return count


_GZ_READ = 1 << 16  # compressed bytes read at a time (also how closely a corrupt byte is located)


def gunzip_blocks(raw: BinaryIO, path: str, block_bytes: int, progress: Optional[Callable[[int], None]] = None) -> Iterator[bytes]:
    """The text of a gzip file (every member, zero padding between members skipped, as the
    ``gzip`` module does) in blocks of about ``block_bytes``. zlib directly, not
    ``gzip.GzipFile``: a truncated or corrupt file is reported with the compressed byte
    offset where it ends or breaks and how much text came before (GzipFile loses both).
    ``progress(n)``: n compressed bytes consumed since the last call."""
    d = zlib.decompressobj(wbits=31)  # exactly the gzip format (header and CRC32 / ISIZE trailer checked)
    inp, fresh, text, out, have = b"", True, 0, [], 0
    while True:
        if not inp:
            inp = raw.read(_GZ_READ)
            if progress is not None and inp:
                progress(len(inp))
            if not inp:
                if not fresh:
                    tail = d.flush()  # output zlib still holds for input it consumed
                    text, have = text + len(tail), have + len(tail)
                    out.append(tail)
                    if not d.eof:
                        raise TextError(
                            f"{path}: truncated (or corrupt) gzip file: it ends at byte {raw.tell()} inside a compressed "
                            f"stream, after {text} bytes of text (an interrupted download or copy?)"
                        )
                if have:
                    yield b"".join(out)
                return
        if fresh:
            inp = inp.lstrip(b"\x00")
            if not inp:
                continue
            fresh = False
        at = raw.tell() - len(inp)  # compressed offset of inp[0]
        try:
            chunk = d.decompress(inp, block_bytes)
        except zlib.error as e:
            raise TextError(
                f"{path}: corrupt gzip data in compressed bytes {at}-{raw.tell()}, after {text} bytes of text ({e})"
            ) from None
        text += len(chunk)
        out.append(chunk)
        have += len(chunk)
        if d.eof:  # a member ended: another may follow
            inp, d, fresh = d.unused_data, zlib.decompressobj(wbits=31), True
        else:
            inp = d.unconsumed_tail
        if have >= block_bytes:
            yield b"".join(out)
            out, have = [], 0


def read_gz(
    path: str, piece_bytes: int, block_bytes: int, progress: Optional[Callable[[int], None]] = None
) -> Iterator[Tuple[int, bytes]]:
    """``(piece, block)`` pairs of a gzip file, in order; a piece in which no line starts
    appears once with ``b""``. ``progress(n)``: n compressed bytes consumed since the last call."""
    with open(path, "rb") as raw:
        blocks = gunzip_blocks(raw, path, block_bytes, progress)
        piece, pending, start = 0, b"", 0  # pending: an unfinished line at `start`
        while True:
            chunk = next(blocks, b"")
            if chunk:
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                if cut == 0 and len(data) > MAX_LINE:
                    raise TextError(f"{path}: no line end in {len(data)} bytes after byte {start}: not line-oriented text")
                lines, pending = data[:cut], data[cut:]
            else:
                lines, pending = pending, b""  # the last line, without its newline
            while lines:
                if start >= (piece + 1) * piece_bytes:  # the next line starts in a later piece
                    following = start // piece_bytes
                    for p in range(piece + 1, following):
                        yield p, b""
                    piece = following
                end = _lines_until(lines, (piece + 1) * piece_bytes - start)
                end = len(lines) if end < 0 else end
                yield piece, lines[:end]
                lines, start = lines[end:], start + end
            if not chunk:
                return


def count_lines_gz(path: str, piece_bytes: int, block_bytes: int = 1 << 24) -> List[int]:
    """Line starts per piece of a gzip file (one decompression pass)."""
    counts: List[int] = []
    for piece, block in read_gz(path, piece_bytes, block_bytes):
        while len(counts) <= piece:
            counts.append(0)
        counts[piece] += block.count(b"\n") + (1 if block and not block.endswith(b"\n") else 0)
    return counts


def newline_positions(block: bytes) -> np.ndarray:
    return np.flatnonzero(np.frombuffer(block, np.uint8) == 10)
