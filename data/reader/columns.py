"""Columnar row groups -> batch arrays, without per-row Python.

A ``RowBlock`` holds one row group (one-hot ids stacked row-major, bags as values +
offsets) plus the order in which this epoch visits its rows. A batch is a list of segments
``(block, start, stop)`` over such orders (a batch may span row groups); ``gather`` copies
exactly the rows it needs, so the epoch's shuffle costs no extra pass over the data.
A shuffled gather is bound by memory latency (a cache miss per row and per array), so a
row's ids, dense values and label live in one packed record gathered with ``np.take``
(whole rows, batch indices sorted). ``benchmarks/reader.py`` measures the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from compactrec.data.reader.manifest import FeatureSchema


class DataError(ValueError):
    """Bad input data; the message names the file, row group and column."""


@dataclass
class RowBlock:
    """One row group. One-hot ids, dense values and the label of a row are packed into one
    row-major int32 record ``[ids x F1 | dense float32 x D | label float32]`` so that
    gathering a shuffled row costs one short run of cache lines instead of three. Ids are
    int32 in the record when every cardinality fits (Criteo-TB's largest, 292M, does), else
    int64 (two words each); batches always carry int64 ids."""

    packed: np.ndarray  # (R, W) int32
    num_onehot: int
    num_dense: int
    id_words: int  # 1: int32 ids, 2: int64 ids
    bags: List[Tuple[np.ndarray, np.ndarray]]  # per multi-hot feature: values (nnz,), offsets (R + 1,)
    order: Optional[np.ndarray] = None  # rows in visiting order; None = file order
    non_finite: int = 0  # dense values replaced by 0 (data.non_finite=zero)

    @staticmethod
    def allocate(rows: int, num_onehot: int, num_dense: int, wide_ids: bool) -> "RowBlock":
        words = 2 if wide_ids else 1
        width = words * num_onehot + num_dense + 1
        return RowBlock(np.zeros((rows, width), np.int32), num_onehot, num_dense, words, [])

    # Views of the packed record (of a block, or of gathered rows with the same layout).
    def onehot(self, packed: Optional[np.ndarray] = None) -> np.ndarray:
        p = self.packed if packed is None else packed
        ids = p[:, : self.id_words * self.num_onehot]
        return ids.view(np.int64) if self.id_words == 2 else ids  # (R, F1)

    def dense(self, packed: Optional[np.ndarray] = None) -> np.ndarray:
        p = self.packed if packed is None else packed
        a = self.id_words * self.num_onehot
        return p[:, a : a + self.num_dense].view(np.float32)  # (R, D)

    def labels(self, packed: Optional[np.ndarray] = None) -> np.ndarray:
        p = self.packed if packed is None else packed
        return p[:, self.id_words * self.num_onehot + self.num_dense].view(np.float32)  # (R,)

    @property
    def rows(self) -> int:
        return self.packed.shape[0] if self.order is None else self.order.shape[0]

    def rows_of(self, a: int, b: int) -> np.ndarray | slice:
        # Sorted within the batch: the same rows (order inside a batch does not matter to
        # training), gathered front to back.
        return slice(a, b) if self.order is None else np.sort(self.order[a:b])

    def repeat_row(self, pos: int, n: int) -> "RowBlock":
        """A block whose ``n`` rows are all copies of visiting position ``pos`` (padding)."""
        r = pos if self.order is None else int(self.order[pos])
        bags = [(v[o[r] : o[r + 1]], np.array([0, o[r + 1] - o[r]])) for v, o in self.bags]
        return RowBlock(self.packed[r : r + 1], self.num_onehot, self.num_dense, self.id_words, bags, np.zeros(n, np.int64))

    @staticmethod
    def zeros(schema: FeatureSchema, n: int) -> "RowBlock":
        """``n`` all-zero rows with id 0 in every feature (padding for a rank with no rows)."""
        multi = sum(f.multi_hot for f in schema.sparse)
        blk = RowBlock.allocate(1, len(schema.sparse) - multi, len(schema.dense), wide_ids(schema))
        blk.bags = [(np.zeros(1, np.int64), np.array([0, 1]))] * multi
        blk.order = np.zeros(n, np.int64)
        return blk


Segment = Tuple[RowBlock, int, int]


def wide_ids(schema: FeatureSchema) -> bool:
    return max((f.cardinality for f in schema.sparse), default=0) > np.iinfo(np.int32).max


def _bag_rows(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray | slice) -> Tuple[np.ndarray, np.ndarray]:
    """Values and lengths of the bags at ``rows`` (in that order)."""
    if isinstance(rows, slice):
        o = offsets[rows.start : rows.stop + 1]
        return values[o[0] : o[-1]], np.diff(o)
    lengths = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    return values[idx], lengths


def gather(segments: Sequence[Segment], multi_hot: Sequence[bool]):
    """Batch arrays from segments: labels (B,), dense (B, D), KJT values and lengths.

    ``multi_hot[f]`` says whether feature f (schema order) is a bag. Returns
    ``(labels, dense, values, lengths)`` with key-major values; ``lengths`` is None when
    every feature is one-hot (every bag has length 1).
    """
    rows = [(blk, blk.rows_of(a, b)) for blk, a, b in segments]
    first = segments[0][0]
    # (B, W): the one random gather. np.take(axis=0) copies whole rows, 3x faster than
    # fancy indexing on a 2-D array.
    parts = [blk.packed[r] if isinstance(r, slice) else np.take(blk.packed, r, axis=0) for blk, r in rows]
    packed = parts[0] if len(parts) == 1 else np.concatenate(parts)
    labels = first.labels(packed).copy()
    dense = first.dense(packed)  # a strided view (rows W words apart): torch reads it without a copy
    onehot = first.onehot(packed).T  # (F1, B) view
    if not any(multi_hot):
        return labels, dense, onehot.astype(np.int64, order="C").reshape(-1), None
    b = labels.shape[0]
    vals, lens = [], []
    j = k = 0
    for is_bag in multi_hot:
        if is_bag:
            parts = [_bag_rows(*blk.bags[k], r) for blk, r in rows]
            vals += [v for v, _ in parts]
            lens += [ln.astype(np.int32) for _, ln in parts]
            k += 1
        else:
            vals.append(onehot[j].astype(np.int64))
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
    table: pa.Table, schema: FeatureSchema, where: str, dense_transform: str, validate: bool, non_finite: str = "fail"
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

    # Fill the record column-major (contiguous copies, the dense transform on contiguous
    # memory), then transpose once: 1.3x faster than writing columns into row records.
    blk = RowBlock.allocate(0, len(onehot_features), len(schema.dense), wide_ids(schema))
    q = np.empty((blk.packed.shape[1], table.num_rows), np.int32)
    w = blk.id_words * len(ids)
    q_ids = q[:w].view(np.int64) if blk.id_words == 2 else q[:w]
    for j, col in enumerate(ids):
        q_ids[j] = col
    d = q[w : w + len(dense_cols)].view(np.float32)
    with np.errstate(over="ignore"):  # a float64 beyond float32 becomes inf: caught just below
        for j, col in enumerate(dense_cols):
            d[j] = col
    replaced = _check_dense(d, dense_cols, table, schema, where, non_finite) if validate else 0
    if dense_transform == "log1p":
        np.log1p(np.fmax(d, 0.0, out=d), out=d)  # fmax: NaN (a null count) -> 0, negatives -> 0
    else:
        np.nan_to_num(d, copy=False, nan=0.0)
    q[w + len(dense_cols)].view(np.float32)[:] = label
    blk.packed = np.ascontiguousarray(q.T)
    blk.bags = bags
    blk.non_finite = replaced
    return blk


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
