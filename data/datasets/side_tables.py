"""User and item side tables: the features a ranking candidate (user, item) is built from.

A data set that supports ranking evaluation adds a ``ranking`` section to its manifest::

    "ranking": {
      "user_key": "user_id", "item_key": "item_id",
      "user": {"file": "side/users.parquet", "key": "user_id",
               "columns": ["user_id", "gender", "age", "occupation", "zip_code"]},
      "item": {"file": "side/items.parquet", "key": "item_id",
               "columns": ["item_id", "release_year", "genres"]}
    }

Each side table is one Parquet file whose row k describes key k (keys are dense ids
0..N-1, N the key feature's cardinality). Every sparse and dense column of the schema comes
from exactly one side table, so a candidate row is the user's row joined with the item's row,
whatever the features are: nothing here knows about MovieLens.

Example::

    spec = read_ranking_spec("datasets/movielens")      # None if the data set has no ranking section
    users = load_side("datasets/movielens", spec.user, manifest.schema)
    users.onehot["gender"].shape                    # (943,)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pyarrow as pa

from compactrec.data.reader import fs
from compactrec.data.reader.manifest import MANIFEST_NAME, FeatureSchema
from compactrec.io import atomic_write_json


@dataclass(frozen=True)
class SideTableSpec:
    file: str  # relative to the data folder
    key: str  # the sparse feature whose dense id indexes the rows
    columns: Tuple[str, ...]  # schema columns (sparse or dense) this table provides


@dataclass(frozen=True)
class RankingSpec:
    user_key: str
    item_key: str
    user: SideTableSpec
    item: SideTableSpec

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        for side in ("user", "item"):
            d[side]["columns"] = list(d[side]["columns"])
        return d

    @staticmethod
    def from_dict(d: Dict[str, Any]) -> "RankingSpec":
        side = lambda s: SideTableSpec(s["file"], s["key"], tuple(s["columns"]))  # noqa: E731
        return RankingSpec(d["user_key"], d["item_key"], side(d["user"]), side(d["item"]))


@dataclass
class SideColumns:
    """One side table in memory: per column, arrays indexed by key id."""

    rows: int
    onehot: Dict[str, np.ndarray] = field(default_factory=dict)  # (rows,) int64
    bags: Dict[str, Tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # values (nnz,), offsets (rows + 1,)
    dense: Dict[str, np.ndarray] = field(default_factory=dict)  # (rows,) float32, raw (untransformed)


def check_spec(spec: RankingSpec, schema: FeatureSchema, where: str) -> None:
    """Every schema column comes from exactly one side; keys are sparse one-hot features."""
    sparse = {f.name: f for f in schema.sparse}
    for side, key in (("user", spec.user_key), ("item", spec.item_key)):
        table: SideTableSpec = getattr(spec, side)
        if table.key != key:
            raise ValueError(f"{where}: ranking.{side}.key is '{table.key}', expected '{key}'")
        if key not in sparse or sparse[key].multi_hot:
            raise ValueError(f"{where}: ranking key '{key}' must be a one-hot sparse feature")
        if key not in table.columns:
            raise ValueError(f"{where}: ranking.{side}.columns must include its key '{key}'")
    wanted = list(schema.dense) + list(sparse)
    both = set(spec.user.columns) & set(spec.item.columns)
    missing = [c for c in wanted if c not in spec.user.columns and c not in spec.item.columns]
    unknown = [c for c in spec.user.columns + spec.item.columns if c not in wanted]
    if both or missing or unknown:
        raise ValueError(
            f"{where}: ranking side tables must cover every feature once: "
            f"in both {sorted(both)}, in neither {missing}, not in the schema {unknown}"
        )


def read_ranking_spec(root: str | Path) -> Optional[RankingSpec]:
    """The manifest's ``ranking`` section, or None when the data set has none."""
    path = fs.join(root, MANIFEST_NAME)
    obj = json.loads(fs.read_text(path))
    if "ranking" not in obj:
        return None
    try:
        return RankingSpec.from_dict(obj["ranking"])
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed ranking section: {e!r}") from None


def add_ranking_section(root: str | Path, spec: RankingSpec) -> None:
    """Add ``spec`` to an existing local ``root/_manifest.json`` (atomically)."""
    path = Path(root) / MANIFEST_NAME
    obj = json.loads(path.read_text())
    obj["ranking"] = spec.to_dict()
    atomic_write_json(path, obj)


def load_side(root: str | Path, table: SideTableSpec, schema: FeatureSchema) -> SideColumns:
    """Read one side table; checks that row k has key k and that ids fit the cardinalities."""
    path = fs.join(root, table.file)
    t = fs.open_parquet(path).read(columns=list(table.columns))
    keys = t.column(table.key).to_numpy()
    if not np.array_equal(keys, np.arange(t.num_rows)):
        raise ValueError(f"{path}: column '{table.key}' must be 0..{t.num_rows - 1} in row order")
    sparse = {f.name: f for f in schema.sparse}
    out = SideColumns(rows=t.num_rows)
    for name in table.columns:
        col = t.column(name).combine_chunks()
        if name in schema.dense:
            out.dense[name] = col.to_numpy(zero_copy_only=False).astype(np.float32)
            continue
        f = sparse[name]
        if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
            offsets = col.offsets.to_numpy().astype(np.int64)
            values = col.values.to_numpy()[offsets[0] : offsets[-1]].astype(np.int64)
            out.bags[name] = (values, offsets - offsets[0])
        else:
            values = col.to_numpy().astype(np.int64)
            if f.multi_hot:  # a one-hot column used as a bag feature: bags of one
                out.bags[name] = (values, np.arange(len(values) + 1, dtype=np.int64))
            else:
                out.onehot[name] = values
        if values.size and (values.min() < 0 or values.max() >= f.cardinality):
            raise ValueError(f"{path}: column '{name}' has ids outside [0, {f.cardinality})")
    return out
