"""Parquet shards -> ``Batch(dense, KeyedJaggedTensor, labels)`` for one rank.

Work is split by row group: every rank reads the footers, lists all row groups of the split,
permutes that list with ``(seed, epoch)`` and takes every ``world_size``-th one starting at its
rank, so the ranks' sets are disjoint, deterministic and cover the split. Rows inside a row
group are permuted with ``(seed, epoch, row group)`` when shuffling. Because every rank knows
every rank's row count from the footers, all ranks agree on the number of steps without a
collective: training drops each rank's remainder (``min_r floor(rows_r / B)`` steps), eval pads
the last batches (``max_r ceil(rows_r / B)`` steps, padding rows marked by ``num_valid``).

Conversion is columnar (``columns.py``: numpy on whole row groups, no per-row Python; the
shuffle is folded into the one copy of each id into its batch). A background thread reads,
converts and batches into a bounded queue (``prefetch`` batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.trainer.data.batch import Batch
from compactrec.trainer.data.columns import DataError, RowBlock, Segment, check_schema, convert, gather
from compactrec.trainer.data.manifest import FeatureSchema
from compactrec.trainer.data.prefetch import prefetch

__all__ = ["ParquetReader", "RowGroupRef", "DataError"]


@dataclass(frozen=True)
class RowGroupRef:
    file: str
    index: int  # row group within the file
    rows: int
    gid: int  # position in the split's list of all row groups (seeds the row shuffle)


class ParquetReader:
    """Batches of one rank over a list of Parquet files.

    Args:
        files: the split's shards (the same list, in the same order, on every rank).
        schema: feature layout (from the data manifest).
        batch_size: rows per batch on this rank.
        pad_last: eval mode: pad the tail instead of dropping it (see module doc).
        max_steps: cap on steps per epoch (-1: none).
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
    ) -> None:
        if not files:
            raise DataError("no Parquet files to read")
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
        self.columns = [schema.label, *schema.dense, *schema.sparse_names]
        self._multi_hot = [f.multi_hot for f in schema.sparse]
        self.row_groups = self._index()
        self._ones = torch.ones(len(schema.sparse) * batch_size, dtype=torch.int32)

    # ---- planning (footers only) -------------------------------------------------
    def _index(self) -> List[RowGroupRef]:
        refs: List[RowGroupRef] = []
        for path in self.files:
            pf = self._open(path)
            check_schema(pf.schema_arrow, self.schema, path)
            if pf.metadata.num_rows == 0:
                raise DataError(f"{path}: empty shard (0 rows)")
            refs += [
                RowGroupRef(path, i, pf.metadata.row_group(i).num_rows, len(refs) + i)
                for i in range(pf.metadata.num_row_groups)
            ]
        return refs

    @staticmethod
    def _open(path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(path)
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None

    def assignment(self, epoch: int) -> List[List[RowGroupRef]]:
        """Row groups of every rank for ``epoch``: rank r gets ``order[r::world_size]``."""
        order = list(range(len(self.row_groups)))
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(order)).tolist()
        refs = [self.row_groups[i] for i in order]
        return [refs[r :: self.world_size] for r in range(self.world_size)]

    def num_steps(self, epoch: int = 0) -> int:
        """Steps of this epoch; the same number on every rank."""
        rows = [sum(g.rows for g in rgs) for rgs in self.assignment(epoch)]
        b = self.batch_size
        steps = max(-(-n // b) for n in rows) if self.pad_last else min(n // b for n in rows)
        return steps if self.max_steps < 0 else min(steps, self.max_steps)

    # ---- reading -------------------------------------------------------------------
    def _read_block(self, ref: RowGroupRef, epoch: int, files: Dict[str, pq.ParquetFile]) -> RowBlock:
        pf = files.get(ref.file) or files.setdefault(ref.file, self._open(ref.file))
        where = f"{ref.file} row group {ref.index}"
        try:
            table = pf.read_row_group(ref.index, columns=self.columns)
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{where}: cannot read ({e})") from None
        block = convert(table, self.schema, where, self.dense_transform, self.validate)
        if self.shuffle:
            block.order = np.random.default_rng([self.seed, epoch, ref.gid]).permutation(block.rows)
        return block

    def _to_batch(self, segments: List[Segment], num_valid: int = -1) -> Batch:
        labels, dense, values, lengths = gather(segments, self._multi_hot)
        if lengths is None:  # all one-hot: reuse one lengths tensor of ones
            t_lengths = self._ones if values.shape[0] == self._ones.shape[0] else torch.ones(values.shape[0], dtype=torch.int32)
        else:
            t_lengths = torch.from_numpy(lengths)
        kjt = KeyedJaggedTensor(keys=self.schema.sparse_names, values=torch.from_numpy(values), lengths=t_lengths)
        return Batch(
            dense_features=torch.from_numpy(dense),
            sparse_features=kjt,
            labels=torch.from_numpy(labels),
            num_valid=num_valid,
        )

    def _batches(self, epoch: int) -> Iterator[Batch]:
        steps, b = self.num_steps(epoch), self.batch_size
        files: Dict[str, pq.ParquetFile] = {}
        done, have = 0, 0
        segments: List[Segment] = []
        last: Optional[RowBlock] = None
        for ref in self.assignment(epoch)[self.rank]:
            if done >= steps:
                break
            block = last = self._read_block(ref, epoch, files)
            pos = 0
            while pos < block.rows and done < steps:
                n = min(b - have, block.rows - pos)
                segments.append((block, pos, pos + n))
                pos, have = pos + n, have + n
                if have == b:
                    yield self._to_batch(segments)
                    segments, have, done = [], 0, done + 1
        while self.pad_last and done < steps:  # eval: pad this rank's tail to the common count
            if segments:
                blk, a, _ = segments[0]
                pad = blk.repeat_row(a, b - have)
            else:
                pad = RowBlock.zeros(self.schema, b) if last is None else last.repeat_row(0, b)
            yield self._to_batch(segments + [(pad, 0, b - have)], num_valid=have)
            segments, have, done = [], 0, done + 1

    def epoch(self, epoch: int = 0) -> Iterator[Batch]:
        """This rank's batches of ``epoch``, produced by a background thread."""
        return prefetch(lambda: self._batches(epoch), self.prefetch)

    def __iter__(self) -> Iterator[Batch]:
        return self.epoch(0)
