"""Parquet shards -> ``Batch(dense, KeyedJaggedTensor, labels)`` for one rank.

Work is split by row group (``plan.py``): every rank reads the footers, lists all row groups
of the split, permutes that list with ``(seed, epoch)`` and takes every ``world_size``-th one
starting at its rank, so the ranks' sets are disjoint, deterministic and cover the split.
Rows inside a row group are permuted with ``(seed, epoch, row group)`` when shuffling.
Because every rank knows every rank's row count from the footers, all ranks agree on the
number of steps without a collective: training drops each rank's remainder
(``min_r floor(rows_r / B)`` steps), eval pads the last batches (``max_r ceil(rows_r / B)``
steps, padding rows marked by ``num_valid``).

Resuming: ``cursor()`` after any batch is a small JSON-able dict (epoch, step, plan, each
rank's next shard / row group / offset); ``epoch(e, cursor=c)`` continues from it. With the
same world and batch size the batches are exactly those an uninterrupted run yields; with
another world size the unread rows of the epoch are re-dealt (``plan.py``).

Files may be local paths or URIs (``s3://``, ``gs://``, ``hdfs://``, ``file://``: ``fs.py``).
Bad input (unreadable, truncated or empty file, schema mismatch, a row group that fails to
decode or validate) is a ``DataError`` naming the file, row group and column; with
``on_bad_file="skip"`` it is a warning, the file (or row group) is left out and counted in
``stats()``. Files are judged from their footers, which every rank reads, so every rank
leaves out the same ones and the step count stays common. A row group that only fails when
its pages are read is seen by one rank alone: that rank keeps the common step count by
padding its last batches (``num_valid`` marks the real rows, ``stats()["rows_padded"]``).

Conversion is columnar (``columns.py``: numpy on whole row groups, no per-row Python; the
shuffle is one ``np.take`` per array and row group, after which a batch is a slice). A
background thread reads, converts and batches into a bounded queue (``prefetch`` batches).
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.data.reader import fs
from compactrec.data.reader import plan as plans
from compactrec.data.reader.batch import Batch
from compactrec.data.reader.columns import Buffers, DataError, RowBlock, Segment, check_schema, convert, gather
from compactrec.data.reader.manifest import FeatureSchema
from compactrec.data.reader.plan import Cursor, RowGroupRef
from compactrec.data.reader.prefetch import prefetch

__all__ = ["ParquetReader", "RowGroupRef", "DataError", "Cursor"]
log = logging.getLogger(__name__)


@dataclass
class _Run:
    """One epoch's reading state; ``plan_step`` counts batches handed to the consumer."""

    epoch: int
    plan: Dict[str, Any]
    streams: List[plans.Stream]
    plan_step: int  # batches consumed under plan
    plan_steps: int  # batches the plan yields in all
    step_base: int  # batches of this epoch consumed before the plan started


class ParquetReader:
    """Batches of one rank over a list of Parquet files.

    Args:
        files: the split's shards (the same list, in the same order, on every rank);
            local paths or URIs.
        schema: feature layout (from the data manifest).
        batch_size: rows per batch on this rank.
        pad_last: eval mode: pad the tail instead of dropping it (see module doc).
        max_steps: cap on steps per epoch (-1: none).
        on_bad_file: "fail" (raise ``DataError``) or "skip" (warn, leave out, count).
    """

    def __init__(
        self,
        files: Sequence[str],
        schema: FeatureSchema,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        seed: int = 0,
        dense_transform: str = "log1p",
        validate: bool = True,
        prefetch: int = 8,
        pad_last: bool = False,
        max_steps: int = -1,
        on_bad_file: str = "fail",
        non_finite: str = "fail",
    ) -> None:
        if not files:
            raise DataError("no Parquet files to read")
        if on_bad_file not in ("fail", "skip"):
            raise ValueError(f"on_bad_file is {on_bad_file!r}; expected 'fail' or 'skip'")
        if non_finite not in ("fail", "zero"):
            raise ValueError(f"non_finite is {non_finite!r}; expected 'fail' or 'zero'")
        if batch_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"batch_size {batch_size}, rank {rank} of {world_size}: need batch_size >= 1 and 0 <= rank < world_size")
        self.files = list(files)
        self.schema = schema
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed = shuffle, seed
        self.dense_transform = dense_transform
        self.validate = validate
        self.prefetch = prefetch
        self.pad_last = pad_last
        self.max_steps = max_steps
        self.on_bad_file = on_bad_file
        self.non_finite = non_finite
        self.non_finite_replaced = 0  # dense values set to 0 (non_finite="zero")
        self.columns = [schema.label, *schema.dense, *schema.sparse_names]
        self._multi_hot = [f.multi_hot for f in schema.sparse]
        self._keys = schema.sparse_names
        self.bad_files: List[Tuple[str, str]] = []  # (file, reason), footer-level
        self.bad_row_groups: List[Tuple[str, int, str]] = []  # (file, row group, reason)
        self.rows_lost = 0  # rows of bad row groups this rank skipped
        self.rows_padded = 0  # rows this rank repeated to keep the common step count
        self.row_groups = self._index()
        self._rows = [g.rows for g in self.row_groups]
        self._data = plans.fingerprint(self.row_groups, seed, shuffle)
        self._ones = torch.ones(len(schema.sparse) * batch_size, dtype=torch.int32)
        self._buffers = Buffers()  # large arrays reused across row groups and epochs
        self._run: Optional[_Run] = None

    # ---- planning (footers only) -------------------------------------------------
    def _index(self) -> List[RowGroupRef]:
        refs: List[RowGroupRef] = []
        for path in self.files:
            try:
                pf = self._open(path)
                check_schema(pf.schema_arrow, self.schema, path)
                if pf.metadata.num_rows == 0:
                    raise DataError(f"{path}: empty shard (0 rows)")
            except DataError as e:
                if self.on_bad_file == "fail":
                    raise
                log.warning("skipping %s", e)
                self.bad_files.append((path, str(e)))
                continue
            refs += [
                RowGroupRef(path, i, pf.metadata.row_group(i).num_rows, len(refs) + i)
                for i in range(pf.metadata.num_row_groups)
            ]
        if not refs:
            raise DataError(f"no readable Parquet file among {len(self.files)} (first: {self.files[0]})")
        return refs

    @staticmethod
    def _open(path: str) -> pq.ParquetFile:
        try:
            return fs.open_parquet(path, page_checksum_verification=True)  # where the writer stored CRCs
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None

    def assignment(self, epoch: int) -> List[List[RowGroupRef]]:
        """Row groups of every rank for a fresh ``epoch``: rank r gets ``order[r::world_size]``."""
        refs = [self.row_groups[g] for g in self._order(epoch)]
        return [refs[r :: self.world_size] for r in range(self.world_size)]

    def _order(self, epoch: int) -> List[int]:
        return plans.epoch_order(len(self.row_groups), self.shuffle, self.seed, epoch)

    def _plan_steps(self, streams: List[plans.Stream], step_base: int) -> int:
        steps = plans.count_steps(streams, self.batch_size, self.pad_last)
        return steps if self.max_steps < 0 else max(0, min(steps, self.max_steps - step_base))

    def _start(self, epoch: int, cursor: Optional[Dict[str, Any]]) -> _Run:
        """The epoch's plan: fresh, continued (same world and batch size) or re-dealt."""
        if cursor is None:
            plan = plans.deal_plan(self.world_size)
            streams = plans.streams(plan, self._rows, self._order(epoch))
            return _Run(epoch, plan, streams, 0, self._plan_steps(streams, 0), 0)
        c = cursor if isinstance(cursor, Cursor) else Cursor.from_dict(cursor)
        if c.epoch != epoch:
            raise ValueError(f"cursor is for epoch {c.epoch}, not epoch {epoch}")
        if c.data != self._data:
            raise DataError(f"cursor was taken on other data or settings ({c.data} != {self._data})")
        base = c.step - c.plan_step
        if c.world_size == self.world_size and c.batch_size == self.batch_size:
            streams = plans.streams(c.plan, self._rows, self._order(epoch))
            steps = self._plan_steps(streams, base)  # this run's max_steps may differ
            return _Run(epoch, c.plan, streams, min(c.plan_step, steps), steps, base)
        if c.finished:  # the epoch is over: nothing is re-dealt
            plan = plans.resplit_plan(c.plan, 0, self.world_size)
            return _Run(epoch, plan, [[] for _ in range(self.world_size)], 0, 0, c.step)
        plan = plans.resplit_plan(c.plan, c.plan_step * c.batch_size, self.world_size)
        streams = plans.streams(plan, self._rows, self._order(epoch))
        return _Run(epoch, plan, streams, 0, self._plan_steps(streams, c.step), c.step)

    def num_steps(self, epoch: int = 0, cursor: Optional[Dict[str, Any]] = None) -> int:
        """Batches ``epoch(epoch, cursor)`` yields; the same number on every rank."""
        run = self._start(epoch, cursor)
        return run.plan_steps - run.plan_step

    def cursor(self) -> Dict[str, Any]:
        """Position after the last batch handed out (JSON-able; pass to ``epoch``)."""
        run = self._run if self._run is not None else self._start(0, None)
        consumed = run.plan_step * self.batch_size
        positions: List[Optional[Dict[str, Any]]] = []
        for stream in run.streams:
            at = plans.locate(stream, consumed)
            ref = None if at is None else self.row_groups[at[0]]
            positions.append(None if ref is None else {"file": ref.file, "row_group": ref.index, "offset": at[1]})
        return Cursor(
            epoch=run.epoch, step=run.step_base + run.plan_step, plan=run.plan, plan_step=run.plan_step,
            plan_steps=run.plan_steps, world_size=self.world_size, batch_size=self.batch_size,
            data=self._data, positions=positions,
        ).to_dict()

    def stats(self) -> Dict[str, int]:
        """Counts of bad input left out (for metrics.json)."""
        return {
            "bad_files": len(self.bad_files),
            "bad_row_groups": len(self.bad_row_groups),
            "rows_lost": self.rows_lost,
            "rows_padded": self.rows_padded,
            "non_finite_values": self.non_finite_replaced,
        }

    @property
    def total_rows(self) -> int:
        """Rows of the readable files, from their footers."""
        return sum(self._rows)

    def check_ahead(self, rank: int = 0, world_size: int = 1, first_row_group: bool = True) -> List[str]:
        """Problems found before training (``DataError`` messages, file / row group / row /
        column named): for files ``rank::world_size``, every row group whose footer
        statistics show a label outside [0, 1], an id outside [0, cardinality) or a
        non-finite dense min / max is converted in full, and so is the first row group of
        each file when ``first_row_group``. Footers are cheap; a file's data is read only
        where a problem is likely, so an eval file's bad rows are found before training,
        not after it."""
        out: List[str] = []
        by_file: Dict[str, List[RowGroupRef]] = {}
        for ref in self.row_groups:
            by_file.setdefault(ref.file, []).append(ref)
        replaced = self.non_finite_replaced  # what training reads is counted then, not here
        for path in list(by_file)[rank::world_size]:
            refs = by_file[path]
            try:
                pf = self._open(path)
                suspects = set(_suspect_row_groups(pf, self.schema))
                if first_row_group:
                    suspects.add(0)
                for ref in refs:
                    if ref.index in suspects:
                        self._read_block(ref, 0, {path: pf})
            except DataError as e:
                out.append(str(e))
        self.non_finite_replaced = replaced
        return out

    # ---- reading -------------------------------------------------------------------
    def _read_block(self, ref: RowGroupRef, epoch: int, files: Dict[str, pq.ParquetFile],
                    buffers: Optional[Buffers] = None) -> RowBlock:
        pf = files.get(ref.file) or files.setdefault(ref.file, self._open(ref.file))
        where = f"{ref.file} row group {ref.index}"
        try:
            table = pf.read_row_group(ref.index, columns=self.columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{where}: cannot read ({e})") from None
        block = convert(table, self.schema, where, self.dense_transform, self.validate, self.non_finite, buffers)
        self.non_finite_replaced += block.non_finite
        if block.rows != ref.rows:
            raise DataError(f"{where}: has {block.rows} rows, its footer says {ref.rows}")
        if self.shuffle:
            block.order = np.random.default_rng([self.seed, epoch, ref.gid]).permutation(block.rows)
        return block

    def _block_or_skip(self, gid: int, epoch: int, files: Dict[str, pq.ParquetFile],
                       buffers: Buffers) -> Optional[RowBlock]:
        ref = self.row_groups[gid]
        try:
            return self._read_block(ref, epoch, files, buffers)
        except DataError as e:
            if self.on_bad_file == "fail":
                raise
            log.warning("skipping %s", e)
            self.bad_row_groups.append((ref.file, ref.index, str(e)))
            self.rows_lost += ref.rows
            return None

    def _to_batch(self, segments: List[Segment], num_valid: int = -1) -> Batch:
        labels, dense, values, lengths = gather(segments, self._multi_hot)
        features = len(self._keys)
        if lengths is None:  # all one-hot: reuse one lengths tensor of ones
            t_lengths = self._ones if values.shape[0] == self._ones.shape[0] else torch.ones(values.shape[0], dtype=torch.int32)
            per_key = [values.shape[0] // features] * features
        else:
            t_lengths = torch.from_numpy(lengths)
            per_key = lengths.reshape(features, -1).sum(1).tolist()
        # values and offsets per key, known here on the host: TorchRec would otherwise sum the
        # lengths on the device and read them back in every sharded lookup's input distribution
        kjt = KeyedJaggedTensor(keys=self._keys, values=torch.from_numpy(values), lengths=t_lengths,
                                length_per_key=per_key, offset_per_key=[0, *itertools.accumulate(per_key)])
        return Batch(
            dense_features=torch.from_numpy(dense),
            sparse_features=kjt,
            labels=torch.from_numpy(labels),
            num_valid=num_valid,
        )

    def _batches(self, run: _Run, first_step: int) -> Iterator[Batch]:
        b = self.batch_size
        steps = run.plan_steps - first_step
        stream = plans.skip(run.streams[self.rank], first_step * b)
        files: Dict[str, pq.ParquetFile] = {}
        buffers = self._buffers
        done, have = 0, 0
        segments: List[Segment] = []
        last: Optional[RowBlock] = None  # padding repeats its first visited row
        cached: Tuple[int, Optional[RowBlock]] = (-1, None)
        for gid, start, stop in stream:
            if done >= steps:
                break
            if cached[0] != gid:  # a re-dealt stream may list one row group twice in a row
                cached = (gid, self._block_or_skip(gid, run.epoch, files, buffers))
            block = cached[1]
            if block is None:
                continue
            last = block
            stop = min(stop, start + (steps - done) * b - have)  # no more rows than the steps take
            part = block.arrange(start, stop, b - have, b, buffers)  # the one copy of these rows
            pos = 0
            while pos < part.rows:
                n = min(b - have, part.rows - pos)
                segments.append((part, pos, pos + n))
                pos, have = pos + n, have + n
                if have == b:
                    yield self._to_batch(segments)
                    segments, have, done = [], 0, done + 1
        # Eval pads this rank's tail to the common count; training only gets here when bad
        # row groups were skipped, and pads the same way so that no rank stops early.
        while done < steps:
            if segments:
                blk, a, _ = segments[0]
                pad = blk.repeat_row(a, b - have)
            else:
                pad = RowBlock.zeros(self.schema, b) if last is None else last.repeat_row(0, b)
            if not self.pad_last:
                self.rows_padded += b - have
            yield self._to_batch(segments + [(pad, 0, b - have)], num_valid=have)
            segments, have, done = [], 0, done + 1

    def epoch(self, epoch: int = 0, cursor: Optional[Dict[str, Any]] = None) -> Iterator[Batch]:
        """This rank's batches of ``epoch`` (from ``cursor`` when given), read by a background thread."""
        run = self._start(epoch, cursor)
        self._run = run
        return self._consume(run)

    def _consume(self, run: _Run) -> Iterator[Batch]:
        first = run.plan_step
        batches = prefetch(lambda: self._batches(run, first), self.prefetch)
        try:
            for batch in batches:
                run.plan_step += 1  # before the yield: cursor() after receiving batch k says k done
                yield batch
        finally:
            batches.close()  # stops the reading thread when the consumer stops early

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)


def _suspect_row_groups(pf: pq.ParquetFile, schema: FeatureSchema) -> List[int]:
    """Row groups whose column statistics (min / max in the footer) show a value the reader
    would refuse; columns without statistics are not judged here."""
    limits: Dict[str, Tuple[float, float, bool]] = {schema.label: (0, 1, False)}
    limits.update({name: (-np.inf, np.inf, True) for name in schema.dense})
    limits.update({f.name: (0, f.cardinality - 1, False) for f in schema.sparse if not f.multi_hot})
    out = []
    md = pf.metadata
    for i in range(md.num_row_groups):
        rg = md.row_group(i)
        for j in range(rg.num_columns):
            col = rg.column(j)
            lim = limits.get(col.path_in_schema)
            st = col.statistics
            if lim is None or st is None or not st.has_min_max:
                continue
            lo, hi, dense = lim
            try:
                mn, mx = float(st.min), float(st.max)
            except (TypeError, ValueError):
                continue
            if (dense and not (np.isfinite(mn) and np.isfinite(mx))) or (not dense and (mn < lo or mx > hi)):
                out.append(i)
                break
    return out
