"""Columnar row groups -> batch arrays, without per-row Python.

A ``RowBlock`` holds one row group column-major (one-hot ids, dense values and labels as
rows of two 2-D arrays, bags as values + offsets) plus the order in which this epoch visits
its rows. Before its rows are batched, the visiting positions a rank reads are laid out
once (``arrange``): one ``np.take`` per array over the whole row group, each batch's rows
sorted, so that a batch is a slice and the shuffle costs no pass beyond that copy. The
gather goes one column at a time; a column of 32-bit ids of a row group of 131k rows is
512 KB and stays in L2 (64-bit ids gathered 2x slower, a row-major record cost two
transposes). ``benchmarks/reader.py`` measures the result (docs/speed.md "Reader").
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import torch

from compactrec.data.reader.manifest import FeatureSchema


class DataError(ValueError):
    """Bad input data; the message names the file, row group and column."""


Bag = Tuple[np.ndarray, np.ndarray]  # values (nnz,) int64, offsets (R + 1,) from 0


class Buffers:
    """Reuses a reader's large per-row-group arrays (MBs each) across row groups and
    epochs: fresh ones cost the kernel page faults and zeroing every time. A buffer is
    handed out again once no array or tensor but the pool refers to it (its reference
    count: views and tensors made from them hold one); at most ``keep`` are kept, beyond
    that arrays are plain. Thread-safe (an epoch's reading thread may outlive it)."""

    def __init__(self, keep: int = 8) -> None:
        self.keep = keep
        self._bufs: List[np.ndarray] = []
        self._lock = threading.Lock()
        # The count of a buffer nothing else refers to, measured as ``empty`` measures it
        # (the list's reference, the loop's, getrefcount's argument: 3 on CPython 3.11)
        probe = [np.empty(1, np.uint8)]
        self._idle = [sys.getrefcount(b) for b in probe][0]

    def empty(self, shape: Tuple[int, ...], dtype: type) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        with self._lock:
            free = [b for b in self._bufs if sys.getrefcount(b) == self._idle and b.nbytes >= n]
            if free:  # the smallest that fits: an index array does not take a block's buffer
                return min(free, key=lambda b: b.nbytes)[:n].view(dtype).reshape(shape)
            buf = np.empty(n, np.uint8)
            if len(self._bufs) < self.keep:
                self._bufs.append(buf)
            return buf.view(dtype).reshape(shape)


def _empty(shape: Tuple[int, ...], dtype: type, buffers: Optional[Buffers]) -> np.ndarray:
    return np.empty(shape, dtype) if buffers is None else buffers.empty(shape, dtype)


@dataclass
class RowBlock:
    """Rows of one row group, column-major: ``ids`` (F1, R) one-hot ids, int32 when every
    cardinality fits (Criteo-TB's largest, 292M, does; half the bytes to gather), else int64;
    ``floats`` (D + 1, R) float32, the dense values (transformed) and the label in the last
    row. Batches always carry int64 ids. ``order`` is the epoch's visiting order (None: file
    order); a block made by ``arrange`` or ``take`` is in visiting order and has none."""

    ids: np.ndarray
    floats: np.ndarray
    bags: List[Bag]  # per multi-hot feature
    order: Optional[np.ndarray] = None  # (R,) intp
    non_finite: int = 0  # dense values replaced by 0 (data.non_finite=zero)

    @property
    def rows(self) -> int:
        return self.floats.shape[1] if self.order is None else self.order.shape[0]

    def take(self, rows: np.ndarray, buffers: Optional[Buffers] = None) -> "RowBlock":
        """The rows at file positions ``rows``, in that order."""
        bags = [_bag_rows(v, o, rows) for v, o in self.bags]
        ids = _empty((self.ids.shape[0], rows.shape[0]), self.ids.dtype, buffers)
        floats = _empty((self.floats.shape[0], rows.shape[0]), np.float32, buffers)
        # mode="wrap": rows are in range by construction; 20% faster than the checked "raise"
        np.take(self.ids, rows, axis=1, out=ids, mode="wrap")
        np.take(self.floats, rows, axis=1, out=floats, mode="wrap")
        return RowBlock(ids, floats, bags)

    def arrange(self, start: int, stop: int, first: int, size: int, buffers: Optional[Buffers] = None) -> "RowBlock":
        """Visiting positions [start, stop) as a block whose position 0 is ``start``. The
        batches cut it after ``first`` rows and then every ``size``; each such run is sorted
        by file row (the same rows; order inside a batch does not matter to training, and
        sorted rows are gathered front to back, 1.8x faster than in random order)."""
        if self.order is None:
            bags = [(v[o[start] : o[stop]], o[start : stop + 1] - o[start]) for v, o in self.bags]
            return RowBlock(self.ids[:, start:stop], self.floats[:, start:stop], bags)
        v = _empty((stop - start,), np.int32, buffers)  # 32-bit keys sort 1.8x faster
        v[:] = self.order[start:stop]
        v[:first].sort()
        full = max(0, v.shape[0] - first) // size * size
        v[first : first + full].reshape(-1, size).sort(axis=1)
        v[first + full :].sort()
        rows = _empty(v.shape, np.intp, buffers)  # np.take's index type (it would convert)
        rows[:] = v
        return self.take(rows, buffers)

    def repeat_row(self, pos: int, n: int) -> "RowBlock":
        """``n`` copies of the row at visiting position ``pos`` (padding)."""
        r = pos if self.order is None else int(self.order[pos])
        return self.take(np.full(n, r, np.intp))

    @staticmethod
    def zeros(schema: FeatureSchema, n: int) -> "RowBlock":
        """``n`` all-zero rows with id 0 in every feature (padding for a rank with no rows)."""
        multi = sum(f.multi_hot for f in schema.sparse)
        ids = np.zeros((len(schema.sparse) - multi, n), _id_dtype(schema))
        bags = [(np.zeros(n, np.int64), np.arange(n + 1))] * multi
        return RowBlock(ids, np.zeros((len(schema.dense) + 1, n), np.float32), bags)


Segment = Tuple[RowBlock, int, int]  # rows [a, b) of a block in visiting order


def wide_ids(schema: FeatureSchema) -> bool:
    return max((f.cardinality for f in schema.sparse), default=0) > np.iinfo(np.int32).max


def _id_dtype(schema: FeatureSchema) -> type:
    return np.int64 if wide_ids(schema) else np.int32


def _bag_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> Bag:
    """Values and offsets of the bags at ``rows`` (in that order)."""
    lengths = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    ends = np.cumsum(lengths)
    idx = np.repeat(starts - (ends - lengths), lengths) + np.arange(int(ends[-1]) if ends.size else 0)
    return values[idx], np.concatenate([[0], ends])


def gather(segments: Sequence[Segment], multi_hot: Sequence[bool]):
    """Batch arrays from segments: labels (B,), dense (B, D), KJT values and lengths.

    ``multi_hot[f]`` says whether feature f (schema order) is a bag. Returns
    ``(labels, dense, values, lengths)`` with key-major values; ``lengths`` is None when
    every feature is one-hot (every bag has length 1). Labels and dense are views of the
    arranged block when the batch lies in one (dense is then strided, which torch reads
    without a copy); the values are the batch's own int64 copy.
    """
    if len(segments) == 1:
        blk, a, b = segments[0]
        ids, floats = blk.ids[:, a:b], blk.floats[:, a:b]
    else:
        ids = np.concatenate([blk.ids[:, a:b] for blk, a, b in segments], axis=1)
        floats = np.concatenate([blk.floats[:, a:b] for blk, a, b in segments], axis=1)
    labels, dense = floats[-1], floats[:-1].T
    onehot = ids.astype(np.int64)  # (F1, B), C order: key-major values
    if not any(multi_hot):
        return labels, dense, onehot.reshape(-1), None
    b = labels.shape[0]
    vals, lens = [], []
    j = k = 0
    for is_bag in multi_hot:
        if is_bag:
            for blk, a, e in segments:
                v, o = blk.bags[k]
                vals.append(v[o[a] : o[e]])
                lens.append(np.diff(o[a : e + 1]).astype(np.int32))
            k += 1
        else:
            vals.append(onehot[j])
            lens.append(np.ones(b, np.int32))
            j += 1
    return labels, dense, np.concatenate(vals), np.concatenate(lens)


def _is_int_list(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t)) and pa.types.is_integer(t.value_type)


def check_schema(arrow_schema: pa.Schema, schema: FeatureSchema, file: str) -> None:
    """Every column the schema needs is present with a usable type, else ``DataError``."""
    types = {f.name: f.type for f in arrow_schema}

    def need(name: str, ok, expected: str) -> None:
        if name not in types:
            raise DataError(f"{file}: missing column '{name}'")
        if not ok(types[name]):
            raise DataError(f"{file}: column '{name}' has type {types[name]}; expected {expected}")

    def numeric(t: pa.DataType) -> bool:
        return pa.types.is_integer(t) or pa.types.is_floating(t)

    need(schema.label, numeric, "an integer or float label")
    for name in schema.dense:
        need(name, numeric, "float32 (or another number type)")
    for f in schema.sparse:
        if f.multi_hot:
            need(f.name, lambda t: _is_int_list(t) or pa.types.is_integer(t), "list<int64>")
        else:
            need(f.name, pa.types.is_integer, "int64")


def _bags(col: pa.ChunkedArray, where: str, name: str) -> Tuple[np.ndarray, np.ndarray]:
    arr = col.combine_chunks()
    if pa.types.is_integer(arr.type):  # a one-hot column read as bags of one
        return arr.to_numpy().astype(np.int64), np.arange(len(arr) + 1, dtype=np.int64)
    if arr.null_count:
        raise DataError(f"{where}: column '{name}' has {arr.null_count} null bags")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    values = arr.values.to_numpy()[offsets[0] : offsets[-1]].astype(np.int64)
    return values, offsets - offsets[0]


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)  # nulls -> NaN for numbers


def convert(
    table: pa.Table, schema: FeatureSchema, where: str, dense_transform: str, validate: bool, non_finite: str = "fail",
    buffers: Optional[Buffers] = None,
) -> RowBlock:
    """An Arrow row group -> ``RowBlock`` (file order); errors name ``where`` and the column.

    With ``validate``, a dense value that is NaN or +-inf (or overflows float32) is an error
    naming the row and column, or with ``non_finite="zero"`` it becomes 0 and is counted in
    ``RowBlock.non_finite``. A null stays allowed (Criteo's empty fields): it reads as 0.
    """
    onehot_features = [f for f in schema.sparse if not f.multi_hot]
    label = _numbers(table, schema.label)
    if validate:
        bad = (label != 0) & (label != 1)  # NaN compares unequal to both
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise DataError(f"{where}: column '{schema.label}' row {row} is {label[row]}; labels must be 0 or 1")
    ids = []
    for f in onehot_features:
        col = table.column(f.name)
        if col.null_count:
            raise DataError(f"{where}: column '{f.name}' has {col.null_count} null ids")
        ids.append(col.to_numpy())
    bag_features = [f for f in schema.sparse if f.multi_hot]
    bags = [_bags(table.column(f.name), where, f.name) for f in bag_features]
    if validate:
        _check_ids(ids, onehot_features, bags, bag_features, where)
    dense_cols = [_numbers(table, name) for name in schema.dense]

    # Column-major copies (contiguous, the dense transform on contiguous memory): ids
    # narrowed to 32 bits when they fit (only validated ids: an unchecked one could wrap),
    # dense values, then the label.
    ids_out = _empty((len(ids), table.num_rows), _id_dtype(schema) if validate else np.int64, buffers)
    for j, col in enumerate(ids):
        ids_out[j] = col
    floats = _empty((len(dense_cols) + 1, table.num_rows), np.float32, buffers)
    d = floats[:-1]
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf: caught just below
        for j, col in enumerate(dense_cols):
            d[j] = col
    replaced = _check_dense(d, dense_cols, table, schema, where, non_finite) if validate else 0
    if dense_transform == "log1p":
        log1p_counts(d)
    else:
        np.nan_to_num(d, copy=False, nan=0.0)
    floats[-1] = label
    return RowBlock(ids_out, floats, bags, non_finite=replaced)


def log1p_counts(d: np.ndarray) -> None:
    """``data.dense_transform=log1p`` in place on float32 values (any shape): log(1 + max(x, 0)),
    NaN (a null count) -> 0, negatives -> 0. The log1p is torch's, vectorised: numpy's float32
    log1p runs one value at a time, 26 of ``convert``'s 31 ms per 125k-row row group on this
    machine (docs/speed.md, "Reader"); the two agree to 1 ulp."""
    np.fmax(d, 0.0, out=d)
    t = torch.from_numpy(d)
    torch.log1p(t, out=t)


def _check_dense(d: np.ndarray, cols: List[np.ndarray], table: pa.Table, schema: FeatureSchema, where: str, policy: str) -> int:
    """NaN / inf in the (D, R) float32 dense block that are not nulls: raise (``fail``) or
    set to 0 and count (``zero``). One vectorised pass when every value is finite."""
    finite = np.isfinite(d)
    if finite.all():
        return 0
    replaced = 0
    for j, name in enumerate(schema.dense):
        bad = ~finite[j]
        if not bad.any():
            continue
        col = table.column(name)
        if col.null_count:
            bad &= ~np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if not bad.any():
            continue
        if policy != "zero":
            row = int(np.flatnonzero(bad)[0])
            value = cols[j][row]
            note = " (overflows float32)" if np.isfinite(value) else ""
            raise DataError(
                f"{where}: column '{name}' row {row} is {value}{note}; dense values must be finite "
                f"({int(bad.sum())} such values in this column; data.non_finite=zero replaces them with 0 and counts them)"
            )
        d[j][bad] = 0.0
        replaced += int(bad.sum())
    return replaced


def _id_limit(v: np.ndarray, cardinality: int) -> int:
    """Threshold t such that ``v.view(unsigned).max() >= t`` iff some id is outside
    [0, cardinality): negative ids viewed as unsigned of the same width are >= 2^(bits-1),
    and a signed column cannot hold ids >= 2^(bits-1) at all."""
    if v.dtype.kind == "i":
        return min(cardinality, 1 << (8 * v.itemsize - 1))
    return cardinality


def _check_ids(ids, onehot_features, bags, bag_features, where: str) -> None:
    """Ids in [0, cardinality) for every integer width the schema allows (int8..int64,
    uint8..uint64); one pass per column over the ids viewed as unsigned."""
    columns = [(f, v, None) for f, v in zip(onehot_features, ids)]
    columns += [(f, v, o) for f, (v, o) in zip(bag_features, bags)]
    for f, v, o in columns:
        if not v.size:
            continue
        unsigned = v.view(np.dtype(f"u{v.itemsize}"))
        if int(unsigned.max()) >= _id_limit(v, f.cardinality):
            bad = int(np.flatnonzero((v < 0) | (v >= f.cardinality))[0])
            row = bad if o is None else int(np.searchsorted(o, bad, side="right") - 1)
            raise DataError(
                f"{where}: column '{f.name}' row {row} has id {int(v[bad])} outside "
                f"[0, {f.cardinality}) (cardinality from the data manifest)"
            )
