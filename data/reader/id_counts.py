"""Id frequencies from a sample of a split: the input of frequency-aware methods (MDE row
blocks).

The sample is spread over every file of the split: each file gives its share of
``max_rows`` from row groups evenly spaced through it (Criteo-TB's files are days in time
order, so the first rows of the first file are a biased sample). Counting is sorted-unique
per row group (``np.unique``) merged into a running (ids, counts) pair per feature, so the
memory of the count step grows with the distinct ids of the sample, not the cardinality
(``np.bincount(ids, minlength=cardinality)`` per batch cost 320 MB per feature at 40M ids).
Across ranks (``count_ids(..., rank, world_size, gather)``, as training calls it) the sample
is read once: rank r counts files r, r + W, ... and ``gather`` (an all-gather of objects)
brings every rank's (ids, counts) to every rank, where they are merged. The merge is a sum,
so every rank gets the same counts as one process reading every file (id -> block maps
agree), and each file is read by one rank instead of all.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactrec.data.reader.columns import DataError
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

SparseCounts = Tuple[np.ndarray, np.ndarray]  # (ids ascending int64, occurrences int64), same length


def _merge(a: SparseCounts, b: SparseCounts) -> SparseCounts:
    """Sum two sparse counts: memory of the distinct ids of both, not of the cardinality."""
    ids = np.concatenate([a[0], b[0]])
    if not ids.size:
        return a
    uniq, inv = np.unique(ids, return_inverse=True)
    return uniq, np.bincount(inv, weights=np.concatenate([a[1], b[1]]), minlength=uniq.size).astype(np.int64)


def _sample_groups(pf: pq.ParquetFile, rows: int) -> List[int]:
    """Row groups evenly spaced through the file, enough for ``rows`` rows."""
    n = pf.metadata.num_row_groups
    if n == 0 or rows <= 0:
        return []
    per_group = max(1, pf.metadata.num_rows // n)
    k = min(n, math.ceil(rows / per_group))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


def _ids_of(col: pa.Array, f: SparseFeature, path: str) -> np.ndarray:
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        col = col.flatten()  # multi-hot bags count every id
    ids = col.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if ids.size and (ids.min() < 0 or ids.max() >= f.cardinality):
        bad = ids[(ids < 0) | (ids >= f.cardinality)][0]
        raise DataError(
            f"{path}: column '{f.name}' holds id {bad} outside [0, {f.cardinality}) (cardinality from "
            "the data manifest; found while counting ids for frequency-ranked blocks)"
        )
    return ids


def count_ids_sparse(
    files: Sequence[str], schema: FeatureSchema, max_rows: int, rank: int = 0, world_size: int = 1,
    gather: Optional[Callable[[Any], List[Any]]] = None,
) -> Dict[str, SparseCounts]:
    """Per sparse feature, (ids, occurrences) of the ids seen in a sample of about
    ``max_rows`` rows spread over ``files`` (each file ``max_rows / len(files)`` rows, from
    evenly spaced row groups). Memory: the sample's distinct ids, never (cardinality,).
    With ``world_size`` > 1 this rank reads files ``rank::world_size`` and ``gather``
    (every rank's object, in rank order) merges the ranks' counts: the same result on every
    rank as one process reading every file."""
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    counts: Dict[str, SparseCounts] = {f.name: empty for f in schema.sparse}
    if not files:
        return counts
    share = math.ceil(max_rows / len(files))  # of ALL files: a file's rows do not depend on the ranks
    for path in files[rank::world_size]:
        pf = pq.ParquetFile(path)
        left = share
        for g in _sample_groups(pf, share):
            if left <= 0:
                break
            table = pf.read_row_group(g, columns=schema.sparse_names)
            table = table.slice(0, min(table.num_rows, left))
            left -= table.num_rows
            for f in schema.sparse:
                ids = _ids_of(table.column(f.name).combine_chunks(), f, f"{path} row group {g}")
                counts[f.name] = _merge(counts[f.name], np.unique(ids, return_counts=True))
    if world_size > 1:
        if gather is None:
            raise ValueError("count_ids_sparse: world_size > 1 needs gather (an all-gather of objects)")
        parts = gather(counts)
        counts = {f.name: empty for f in schema.sparse}
        for part in parts:  # a sum: the same merged counts whatever the ranks' order
            for name, pair in part.items():
                counts[name] = _merge(counts[name], pair)
    return counts


def count_ids(
    files: Sequence[str], schema: FeatureSchema, max_rows: int, rank: int = 0, world_size: int = 1,
    gather: Optional[Callable[[Any], List[Any]]] = None,
) -> Dict[str, np.ndarray]:
    """``count_ids_sparse`` as dense (cardinality,) int64 arrays: what the MDE row-block
    builder takes today (this conversion, not the count, is cardinality-sized)."""
    sparse, out = count_ids_sparse(files, schema, max_rows, rank, world_size, gather), {}
    for f in schema.sparse:
        ids, occ = sparse[f.name]
        dense = np.zeros(f.cardinality, dtype=np.int64)
        dense[ids] = occ
        out[f.name] = dense
    return out
