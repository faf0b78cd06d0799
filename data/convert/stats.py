"""Per-column statistics of converted rows: accumulated per block, merged over pieces.

Exact and additive: rows and clicks per split; per dense column non-null count, nulls,
negatives, min, max, sum; per categorical feature empty fields, largest id written, ids sent
to the overflow id. Approximate and mergeable: distinct non-empty raw values per feature
(HyperLogLog registers, ``hll.py``), kept beside the JSON because they are arrays.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compactrec.data.convert import hll
from compactrec.data.convert.criteo import DENSE_NAMES, SPARSE_NAMES


def _dense_stats(col: pa.ChunkedArray) -> Dict[str, Any]:
    mm = pc.min_max(col)
    return {
        "count": len(col) - col.null_count,
        "nulls": col.null_count,
        "negatives": int(pc.sum(pc.less(col, 0)).as_py() or 0),
        "min": mm["min"].as_py(),
        "max": mm["max"].as_py(),
        "sum": float(pc.sum(col.cast(pa.float64())).as_py() or 0.0),
    }


class ColumnStats:
    """Statistics of one piece (or, merged, of the whole conversion)."""

    def __init__(self) -> None:
        self.splits: Dict[str, Dict[str, int]] = {}
        self.dense: Dict[str, Dict[str, Any]] = {}
        self.cats: Dict[str, Dict[str, int]] = {n: {"empty": 0, "max_id": -1, "overflow": 0} for n in SPARSE_NAMES}
        self.registers = hll.new_registers(len(SPARSE_NAMES))

    def add_rows(self, split: str, label: np.ndarray) -> None:
        s = self.splits.setdefault(split, {"rows": 0, "clicks": 0})
        s["rows"] += int(label.shape[0])
        s["clicks"] += int(np.count_nonzero(label))

    def add_dense(self, dense: List[pa.ChunkedArray]) -> None:
        for name, col in zip(DENSE_NAMES, dense):
            self._merge_dense(name, _dense_stats(col))

    def add_cats(self, raw: np.ndarray, ids: np.ndarray, overflow: List[Optional[int]]) -> None:
        """raw (F, n) values (-1 empty), ids (F, n) as written, overflow id per feature."""
        for f, name in enumerate(SPARSE_NAMES):
            c = self.cats[name]
            present = raw[f] >= 0
            c["empty"] += int(raw[f].shape[0] - np.count_nonzero(present))
            if ids[f].size:
                c["max_id"] = max(c["max_id"], int(ids[f].max()))
            if overflow[f] is not None:
                c["overflow"] += int(np.count_nonzero(ids[f] == overflow[f]))
            hll.update(self.registers[f], raw[f][present])

    def _merge_dense(self, name: str, s: Dict[str, Any]) -> None:
        cur = self.dense.get(name)
        if cur is None:
            self.dense[name] = dict(s)
            return
        for k in ("count", "nulls", "negatives", "sum"):
            cur[k] += s[k]
        for k, pick in (("min", min), ("max", max)):
            vals = [v for v in (cur[k], s[k]) if v is not None]
            cur[k] = pick(vals) if vals else None

    def merge(self, other: "ColumnStats") -> None:
        for split, s in other.splits.items():
            cur = self.splits.setdefault(split, {"rows": 0, "clicks": 0})
            cur["rows"] += s["rows"]
            cur["clicks"] += s["clicks"]
        for name, s in other.dense.items():
            self._merge_dense(name, s)
        for name, s in other.cats.items():
            c = self.cats[name]
            c["empty"] += s["empty"]
            c["overflow"] += s["overflow"]
            c["max_id"] = max(c["max_id"], s["max_id"])
        hll.merge(self.registers, other.registers)

    def to_json(self) -> Dict[str, Any]:
        return {"splits": self.splits, "dense": self.dense, "cats": self.cats}

    @staticmethod
    def from_json(obj: Dict[str, Any], registers: np.ndarray) -> "ColumnStats":
        s = ColumnStats()
        s.splits, s.dense, s.cats = obj["splits"], obj["dense"], obj["cats"]
        s.registers = registers
        return s

    def distinct(self) -> Dict[str, int]:
        return {name: int(round(hll.estimate(self.registers[f]))) for f, name in enumerate(SPARSE_NAMES)}

    def summary(self) -> Dict[str, Any]:
        """The manifest's view: dense means, categorical counts and distinct estimates."""
        dense = {}
        for name, s in self.dense.items():
            dense[name] = {**s, "mean": s["sum"] / s["count"] if s["count"] else None}
        distinct = self.distinct()
        cats = {name: {**c, "distinct_raw_estimate": distinct[name]} for name, c in self.cats.items()}
        return {"dense": dense, "sparse": cats}
