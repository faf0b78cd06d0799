"""Criteo click-log text -> columns, vectorised: one block of whole lines at a time.

A line is ``label \\t int_0 .. int_12 \\t cat_0 .. cat_25`` (40 tab-separated fields, no
header). Integer fields may be empty or negative; categorical fields are up to 8 hex digits
or empty. ``pyarrow.csv`` splits the block (C++); categorical strings become int64 by a
SWAR decode of their bytes (8 hex digits = one uint64 word, no per-row Python); dense
fields are parsed as int64 by the CSV reader. A line that does not fit (wrong number of
fields, a label other than 0/1, a non-integer dense field, a non-hex or over-long
categorical) is dropped and reported as ``BadLine(line, reason, text)`` with its 1-based line
number within the block; Python touches bad lines only.

Example::

    cols = parse_block(b"1\\t5\\t\\t...\\t68fd1e64\\t...\\n")
    cols.cats[0]   # (rows,) int64 raw values; -1 where the field was empty
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, NamedTuple, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from compactrec.data.convert.criteo import DENSE_NAMES, LABEL, SPARSE_NAMES

NUM_FIELDS = 1 + len(DENSE_NAMES) + len(SPARSE_NAMES)
NAMES = [LABEL, *DENSE_NAMES, *SPARSE_NAMES]
# Binary, not string: no UTF-8 check (faster), and stray non-UTF-8 bytes make a bad field,
# not a failed block.
_FAST_TYPES = {LABEL: pa.int8(), **{n: pa.int64() for n in DENSE_NAMES}, **{n: pa.binary() for n in SPARSE_NAMES}}
_TEXT_TYPES = {n: pa.binary() for n in NAMES}
_HEX = np.zeros(256, bool)
_HEX[np.frombuffer(b"0123456789abcdefABCDEF", np.uint8)] = True
_U = np.uint64
EMPTY = -1  # raw value of an empty categorical field
MAX_DETAILED = 100  # bad lines per block described with a reason and their text


class BadLine(NamedTuple):
    line: int  # 1-based, within the block
    reason: str
    text: str


@dataclass
class Columns:
    """The good rows of a block: label (n,) int8, dense (13,) arrays of float32 with nulls,
    cats (26, n) int64 raw values (``EMPTY`` for an empty field), and where they came from."""

    label: np.ndarray
    dense: List[pa.ChunkedArray]
    cats: np.ndarray
    row_lines: np.ndarray  # (n,) 0-based line index of each row within the block
    lines: int  # physical lines in the block
    bad: List[BadLine] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return int(self.label.shape[0])


def _read(data: bytes, types, wrong_width: List[Tuple[int, int, str]]) -> pa.Table:
    def on_invalid(row) -> str:
        wrong_width.append((row.number, row.actual_columns, row.text))
        return "skip"

    return pcsv.read_csv(
        pa.py_buffer(data),
        read_options=pcsv.ReadOptions(column_names=NAMES, use_threads=False, block_size=1 << 20),
        parse_options=pcsv.ParseOptions(
            delimiter="\t", quote_char=False, escape_char=False, ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=types, null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=False,
            check_utf8=False,
        ),
    )


def _hex_words(buf: np.ndarray) -> np.ndarray:
    """(n * 8,) uint8 hex digits -> (n,) int64: SWAR, 8 digits per uint64 word."""
    x = np.frombuffer(buf.tobytes(), _U) if buf.ctypes.data % 8 else buf.view(_U)
    x = (x & _U(0x0F0F0F0F0F0F0F0F)) + _U(9) * ((x >> _U(6)) & _U(0x0101010101010101))  # digit values
    x = ((x << _U(4)) | (x >> _U(8))) & _U(0x00FF00FF00FF00FF)  # pairs of digits -> bytes
    x = ((x << _U(8)) | (x >> _U(16))) & _U(0x0000FFFF0000FFFF)  # -> 16-bit halves
    x = ((x << _U(16)) | (x >> _U(32))) & _U(0xFFFFFFFF)  # -> the 32-bit value
    return x.view(np.int64)


def _hex_chunk(arr: pa.BinaryArray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One string chunk -> (raw ids with ``EMPTY`` for nulls, bad-row mask or None)."""
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], np.int32, n + 1, arr.offset * 4) if n else np.zeros(1, np.int32)
    data = np.frombuffer(arr.buffers()[2], np.uint8) if n and arr.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    present = lengths > 0
    ids = np.full(n, EMPTY, np.int64)
    if (lengths[present] == 8).all():  # every Criteo field: digits back to back, no gather
        digits = data[offsets[0] : offsets[-1]]
        if _HEX[digits].all():
            ids[present] = _hex_words(digits)
            return ids, None
        words = digits.reshape(-1, 8).copy()
        bad = ~_HEX[words].all(1)
        words[bad] = ord("0")
        ids[present] = _hex_words(words.reshape(-1))
        mask = np.zeros(n, bool)
        mask[np.flatnonzero(present)[bad]] = True
        return ids, mask
    # Some fields have 1-7 (or > 8) digits: right-align each in an 8-byte window of '0's.
    ok = present & (lengths <= 8)
    pos = offsets[1:, None] - 8 + np.arange(8)  # (n, 8) byte positions ending at each field's end
    inside = pos >= offsets[:-1, None]
    digits = np.where(inside, data[np.clip(pos, 0, len(data) - 1)], ord("0")).astype(np.uint8)
    valid = _HEX[digits].all(1)
    mask = present & ~(ok & valid)
    digits[~(ok & valid)] = ord("0")
    ids[ok & valid] = _hex_words(digits.reshape(-1))[ok & valid]
    return ids, (mask if mask.any() else None)


def _hex_column(col: pa.ChunkedArray) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    parts = [_hex_chunk(c) for c in col.chunks] or [(np.zeros(0, np.int64), None)]
    ids = np.concatenate([p[0] for p in parts])
    if all(p[1] is None for p in parts):
        return ids, None
    return ids, np.concatenate([p[1] if p[1] is not None else np.zeros(len(p[0]), bool) for p in parts])


def _text_bad_rows(table: pa.Table) -> np.ndarray:
    """Slow path (a block with a non-integer dense field or odd label): rows that fail."""
    bad = ~pc.fill_null(pc.is_in(table.column(LABEL), pa.array([b"0", b"1"])), False).to_numpy(zero_copy_only=False)
    for name in DENSE_NAMES:
        ok = pc.match_substring_regex(table.column(name), r"^-?[0-9]{1,18}$")
        bad |= ~pc.fill_null(ok, True).to_numpy(zero_copy_only=False)
    return bad


def _text(v) -> Optional[str]:
    """A field for a message (the fast path reads the label and dense fields as numbers)."""
    if v is None:
        return None
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _reason(table: pa.Table, row: int, cat_bad: List[Optional[np.ndarray]]) -> str:
    values = [_text(table.column(n)[row].as_py()) for n in NAMES]
    if all(v is None for v in values):
        return "empty line"
    label = values[0]
    if label is None or label not in ("0", "1"):
        return f"label is {label!r}, expected 0 or 1"
    for name, v in zip(DENSE_NAMES, values[1 : 1 + len(DENSE_NAMES)]):
        if v is not None and not (v.lstrip("-").isdigit() and v.isascii()):
            return f"{name} is {v!r}, not an integer"
    for name, mask, v in zip(SPARSE_NAMES, cat_bad, values[1 + len(DENSE_NAMES) :]):
        if mask is not None and mask[row]:
            return f"{name} is {v!r}, not an id of up to 8 hex digits"
    return "malformed"


class _Lines:
    """Text of a block's lines by index, for messages (built only when a line is bad)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10)

    def __getitem__(self, line: int) -> str:
        start = int(self.ends[line - 1]) + 1 if line > 0 else 0
        end = int(self.ends[line]) if line < len(self.ends) else len(self.data)
        return self.data[start:end][:300].decode("utf-8", "replace")


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


def parse_block(data: bytes) -> Columns:
    """Whole lines -> the good rows' columns plus every bad line (see module doc)."""
    if b"\r" in data:  # pyarrow.csv ends a line at a bare \r: keep line numbers exact
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"?")
    lines = count_lines(data)
    wrong_width: List[Tuple[int, int, str]] = []
    try:
        table = _read(data, _FAST_TYPES, wrong_width)
        row_bad = np.zeros(table.num_rows, bool)
        label = table.column(LABEL).to_numpy(zero_copy_only=False)
        row_bad |= ~np.isin(label, (0, 1))  # null (NaN) or another number
    except pa.ArrowInvalid:  # a field the fast types cannot hold: check every field as text
        wrong_width.clear()
        table = _read(data, _TEXT_TYPES, wrong_width)
        row_bad = _text_bad_rows(table)
    if table.num_rows + len(wrong_width) != lines:
        raise ValueError(f"block of {lines} lines parsed into {table.num_rows + len(wrong_width)} rows")
    cats, cat_bad = [], []
    for name in SPARSE_NAMES:
        ids, bad = _hex_column(table.column(name))
        cats.append(ids)
        cat_bad.append(bad)
        if bad is not None:
            row_bad |= bad
    # Rows of the table are the lines that had 40 fields, in order.
    skipped = np.array(sorted(n - 1 for n, _, _ in wrong_width), np.int64)
    row_lines = np.delete(np.arange(lines, dtype=np.int64), skipped)
    bad_lines = [BadLine(n, f"{k} field(s), expected {NUM_FIELDS}", t[:300]) for n, k, t in wrong_width]
    if row_bad.any():
        text = _Lines(data)
        for i, row in enumerate(np.flatnonzero(row_bad).tolist()):
            line = int(row_lines[row])
            if i < MAX_DETAILED:
                bad_lines.append(BadLine(line + 1, _reason(table, row, cat_bad), text[line]))
            else:  # counted exactly; described only up to MAX_DETAILED per block
                bad_lines.append(BadLine(line + 1, "malformed", ""))
        keep = pa.array(~row_bad)
        table = table.filter(keep)
        cats = [c[~row_bad] for c in cats]
        row_lines = row_lines[~row_bad]
    label = pc.cast(table.column(LABEL), pa.int8()).to_numpy()
    dense = [pc.cast(table.column(n) if pa.types.is_integer(table.schema.field(n).type)
                     else pc.cast(table.column(n), pa.int64()), pa.float32(), safe=False)
             for n in DENSE_NAMES]
    cat_arr = np.stack(cats) if cats[0].size else np.zeros((len(SPARSE_NAMES), 0), np.int64)
    return Columns(label=label, dense=dense, cats=cat_arr, row_lines=row_lines, lines=lines, bad=sorted(bad_lines))
