"""Raw categorical values -> the ids written to the shards. Id 0 is an empty field, always.

The default (no ``--id-map``, ``--max-ids`` or ``--freq-map``) is ``freq`` with the counts made
by the conversion itself (``OUT/.convert/counts``, a counting pass over the inputs first) and a
cap of ``DEFAULT_FREQ_CAP`` ids: every table is sized to its feature's distinct values (or
the cap). ``raw`` only when asked for: its tables are as large as the values (~2^32 rows).

- ``raw``: id = value + 1 (8 hex digits: ids up to 2^32, cardinality up to 2^32 + 1).
- ``hash`` (``--max-ids N``): id = 1 + ``hash_mod(value, N - 1)`` (``compactrec.hashing``,
  seed 0), so ids lie in [0, N).
- ``freq`` (``--freq-map COUNTS_DIR`` from ``compactrec convert criteo-count``, or counted by
  the conversion when no ``COUNTS_DIR`` is given; optional ``--max-ids N``): the K most frequent values of the counted data get ids 1..K in order of
  frequency (id 1 = most frequent; ties by value), K = distinct values, or N - 2 under a cap;
  every other value, rarer or never counted, gets the overflow id K + 1. Ids lie in [0, N).
  The frequency order lets mixed-dimension embeddings cut tables by id without a rank map.

Example::

    m = IdMap(IdMapSpec("hash", max_ids=1000))
    m.apply(np.array([[-1, 0x68fd1e64]]))   # [[0, 1 + hash_mod(0x68fd1e64, 999)]]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional

import numpy as np

from compactrec.hashing import splitmix64_np  # numpy only: conversion workers do not import torch
from compactrec.data.convert.criteo import SPARSE_NAMES

KINDS = ("raw", "hash", "freq")
DEFAULT_FREQ_CAP = 10_000_000  # ids per feature of the default map (rarer values share one id)


@dataclass(frozen=True)
class IdMapSpec:
    kind: str = "freq"  # with counts_dir None: counted by the conversion (criteo_convert.py)
    max_ids: Optional[int] = DEFAULT_FREQ_CAP
    counts_dir: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"id map {self.kind!r}; expected one of {list(KINDS)}")
        if self.kind == "raw" and self.max_ids is not None:
            raise ValueError("--max-ids needs --id-map hash or a --freq-map")
        if self.kind == "hash" and (self.max_ids is None or self.max_ids < 2):
            raise ValueError(f"--id-map hash needs --max-ids >= 2 (got {self.max_ids})")
        if self.kind == "freq" and self.max_ids is not None and self.max_ids < 3:
            raise ValueError(f"--max-ids must be >= 3 with a frequency map (got {self.max_ids})")

    def to_json(self) -> Dict[str, Any]:
        return asdict(self)


class IdMap:
    """Applies a spec to (features, rows) raw values; ``overflow[f]`` is the overflow id or None."""

    def __init__(self, spec: IdMapSpec) -> None:
        self.spec = spec
        self.overflow: List[Optional[int]] = [None] * len(SPARSE_NAMES)
        self._tables: List[Any] = []
        if spec.kind == "freq":
            from compactrec.data.convert.freq_count import load_table

            for f, name in enumerate(SPARSE_NAMES):
                table = load_table(spec.counts_dir, name)  # type: ignore[arg-type]
                k = table.distinct if spec.max_ids is None else min(table.distinct, spec.max_ids - 2)
                self._tables.append((table, k))
                self.overflow[f] = k + 1

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """(F, n) int64 raw values (-1 = empty) -> (F, n) int64 ids."""
        empty = raw < 0
        if self.spec.kind == "raw":
            ids = raw + 1
        elif self.spec.kind == "hash":
            m = np.uint64(self.spec.max_ids - 1)  # type: ignore[operator]
            ids = (splitmix64_np(raw) & np.uint64(0x7FFFFFFFFFFFFFFF)) % m
            ids = ids.astype(np.int64) + 1
        else:
            ids = np.empty_like(raw)
            for f, (table, k) in enumerate(self._tables):
                ids[f] = table.ids(raw[f], k)
        ids[empty] = 0
        return ids

    def describe(self) -> Dict[str, Any]:
        """For the manifest: what an id means."""
        d: Dict[str, Any] = {**self.spec.to_json(), "empty_id": 0}
        if self.spec.kind == "raw":
            d["order"] = "raw value + 1"
        elif self.spec.kind == "hash":
            d["order"] = "1 + compactrec.hashing.hash_mod(raw value, max_ids - 1, seed=0)"
        else:
            d["order"] = "frequency rank: id 1 = most frequent counted value, ties by value"
            d["overflow_id"] = dict(zip(SPARSE_NAMES, self.overflow))
        return d
