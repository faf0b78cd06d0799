"""Convert one job (a plain file's piece, or every piece of a .gz file) into Parquet shards.

Each piece becomes ``SPLIT/<stem>-part-NNNNN.parquet`` for each split its lines go to (one,
or two for the piece where day 23 is cut into val and test). Rows keep input order; row
groups hold exactly ``row_group_rows`` rows (the last one fewer). Shards are written under
a temporary name and renamed when complete; the piece's marker (line count, rows, column
statistics, malformed lines, the HyperLogLog registers beside it) is written after them.
A killed run leaves temporary files and no marker: the next run removes them and redoes
the piece. Output depends on the input and the options only, so a redone piece is
byte-identical to the one an uninterrupted run writes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compactrec.data.convert.stats import ColumnStats
from compactrec.data.convert.criteo import DENSE_NAMES, LABEL, SPARSE_NAMES
from compactrec.data.convert.criteo_tsv import Columns
from compactrec.data.convert.id_map import IdMap, IdMapSpec
from compactrec.data.convert.parallel import Report
from compactrec.data.convert.pieces import BadLines, PieceJob, iter_pieces, marker_path, parsed, piece_name
from compactrec.io import atomic_write, atomic_write_json, temp_path

SCHEMA = pa.schema(
    [pa.field(LABEL, pa.int8(), nullable=False)]
    + [pa.field(n, pa.float32()) for n in DENSE_NAMES]
    + [pa.field(n, pa.int64(), nullable=False) for n in SPARSE_NAMES]
)


@dataclass(frozen=True)
class ConvertJob:
    job: PieceJob
    cuts: Tuple[Tuple[int, str], ...]  # (first line, split), ascending; one entry: all lines
    id_map: IdMapSpec
    row_group_rows: int
    compression: str


@lru_cache(maxsize=2)
def _id_map(spec: IdMapSpec) -> IdMap:  # once per worker process (frequency tables are mmapped)
    return IdMap(spec)


class ShardWriter:
    """One shard: row groups of exactly ``rows_per_group`` rows, temp name until ``close``."""

    def __init__(self, path: Path, rows_per_group: int, compression: str) -> None:
        self.path, self.rows_per_group = path, rows_per_group
        self.tmp = temp_path(path)
        # Small dictionaries only: a high-cardinality id column gives up on dictionary
        # encoding after 64 KiB instead of 1 MiB (2.5x faster writes on raw Criteo ids).
        self.writer = pq.ParquetWriter(
            self.tmp, SCHEMA, compression=compression, write_page_checksum=True, dictionary_pagesize_limit=1 << 16
        )
        self.pending: List[pa.Table] = []
        self.buffered = self.rows = 0

    def add(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.buffered += table.num_rows
        while self.buffered >= self.rows_per_group:
            self._flush(self.rows_per_group)

    def _flush(self, n: int) -> None:
        table = pa.concat_tables(self.pending)
        # One chunk per column: the bytes written depend on the rows only, not on how
        # the input happened to be cut into blocks.
        self.writer.write_table(table.slice(0, n).combine_chunks(), row_group_size=n)
        rest = table.slice(n)
        self.pending, self.buffered, self.rows = [rest], rest.num_rows, self.rows + n

    def close(self) -> int:
        if self.buffered:
            self._flush(self.buffered)
        self.writer.close()
        with open(self.tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)
        return self.rows

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)


def _table(cols: Columns, ids: np.ndarray, rows: Optional[np.ndarray]) -> pa.Table:
    """Rows (all, or a boolean mask) of a parsed block as a table in the shard schema."""
    label, dense, cat = cols.label, cols.dense, ids
    if rows is not None:
        mask = pa.array(rows)
        label, dense, cat = label[rows], [pc.filter(c, mask) for c in dense], ids[:, rows]
    arrays = [pa.array(label, pa.int8()), *dense, *(pa.array(cat[f]) for f in range(len(SPARSE_NAMES)))]
    return pa.Table.from_arrays(arrays, schema=SCHEMA)


def save_array(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)


def _remove_stale_temps(out: Path, name: str) -> None:
    for tmp in out.glob(f"*/.{name}.parquet.*.tmp"):
        tmp.unlink(missing_ok=True)


def _convert_piece(cj: ConvertJob, piece: int, line_base: Optional[int], blocks, report: Report) -> Dict[str, Any]:
    job, out = cj.job, Path(cj.job.out)
    name = piece_name(job.src.stem, piece)
    _remove_stale_temps(out, name)
    ids_of = _id_map(cj.id_map)
    cut_lines = np.array([c[0] for c in cj.cuts], np.int64)
    writers: Dict[str, ShardWriter] = {}
    stats, bad = ColumnStats(), BadLines(job, piece, line_base)
    lines = 0
    try:
        for cols, before, _ in parsed(blocks, bad):
            ids = ids_of.apply(cols.cats)
            stats.add_cats(cols.cats, ids, ids_of.overflow)
            stats.add_dense(cols.dense)
            if len(cj.cuts) == 1:
                parts = [(cj.cuts[0][1], None)]
            else:  # lines of this block fall on both sides of a cut
                where = np.searchsorted(cut_lines, line_base + before + cols.row_lines, side="right") - 1  # type: ignore[operator]
                parts = [(split, where == i) for i, (_, split) in enumerate(cj.cuts) if (where == i).any()]
            for split, rows in parts:
                if cols.rows == 0:
                    continue
                shard = writers.get(split) or writers.setdefault(
                    split, ShardWriter(out / split / f"{name}.parquet", cj.row_group_rows, cj.compression)
                )
                shard.add(_table(cols, ids, rows))
                stats.add_rows(split, cols.label if rows is None else cols.label[rows])
            lines = before + cols.lines
            report(0, cols.rows)
        shards = {split: {"file": f"{split}/{name}.parquet", "rows": w.close()} for split, w in writers.items()}
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    registers = marker_path(out, job.src.stem, piece).with_suffix(".hll.npy")
    atomic_write(registers, lambda tmp: save_array(tmp, stats.registers))
    files = {s["file"]: os.path.getsize(out / s["file"]) for s in shards.values()}
    files[os.path.relpath(registers, out)] = os.path.getsize(registers)
    marker = {
        "version": 1, "stem": job.src.stem, "piece": piece, "input": job.src.path, "input_size": job.src.size,
        "lines": lines, "line_base": line_base, "shards": shards, "files": files,
        "stats": stats.to_json(), "bad": bad.to_json(),
    }
    atomic_write_json(marker_path(out, job.src.stem, piece), marker)
    return marker


def convert_task(cj: ConvertJob, report: Report) -> List[Dict[str, Any]]:
    """Worker entry point: the markers of the pieces this job converted."""
    return [_convert_piece(cj, k, base, blocks, report) for k, base, blocks in iter_pieces(cj.job, report)]
