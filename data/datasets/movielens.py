"""MovieLens-100K (RecBole's atomic files) -> the project's Parquet layout + manifest.

Input: ``ml-100k.inter`` (user_id, item_id, rating, timestamp), ``ml-100k.user`` (user_id,
age, gender, occupation, zip_code), ``ml-100k.item`` (item_id, movie_title, release_year,
class), tab-separated with typed headers (``user_id:token``); see ``recbole_wheel.py``.

Output (``OUT``)::

    train/part-00000.parquet ...   80% of ratings, the earliest
    val/part-00000.parquet         the next 10%
    test/part-00000.parquet        the last 10%
    side/users.parquet, side/items.parquet, side/vocab.json
    _manifest.json                 schema, splits, stats, and a ``ranking`` section

- label = rating >= 4 (int8).
- Sparse features (int64 dense ids 0..N-1; raw tokens sorted, numerically when every token
  of the column is an integer, so user "1" is id 0): user_id, item_id, gender, age,
  occupation, zip_code, release_year (one-hot) and genres (``list<int64>``, multi-hot).
  The manifest carries each cardinality; ``side/vocab.json`` maps ids back to raw tokens.
  No dense columns.
- Split: ratings sorted by (timestamp, user, item); the first 80% are train, the next 10%
  val, the last 10% test, so every val rating is no earlier than every train rating and
  every test rating no earlier than every val rating. ``rating`` and ``timestamp`` are kept as
  extra columns (the reader ignores them).
- Row order: val and test stay in time order; train rows are permuted once with ``seed``
  (the reader then also permutes row groups per epoch and rows inside each row group).
- Side tables: row k of ``users.parquet`` holds user k's features, likewise for items, so
  ranking evaluation (``trainer/ranking.py``) can build any (user, item) candidate row.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from compactrec.data.reader.manifest import FeatureSchema, Manifest, SparseFeature, SplitInfo, write_manifest
from compactrec.data.datasets.side_tables import RankingSpec, SideTableSpec, add_ranking_section
from compactrec.io import atomic_write, atomic_write_text

USER_FEATURES = ("user_id", "gender", "age", "occupation", "zip_code")
ITEM_FEATURES = ("item_id", "release_year", "genres")
SPARSE = ("user_id", "item_id", "gender", "age", "occupation", "zip_code", "release_year", "genres")
MULTI_HOT = ("genres",)
SPLITS = (("train", 0.8), ("val", 0.1), ("test", 0.1))


def read_atomic(path: str | Path) -> pa.Table:
    """A RecBole atomic file as strings; header ``name:type`` becomes column ``name``."""
    opts = pacsv.ReadOptions(autogenerate_column_names=False)
    parse = pacsv.ParseOptions(delimiter="\t", quote_char=False)
    with open(path, "rb") as f:
        header = f.readline().decode().rstrip("\r\n").split("\t")
    names = [h.split(":", 1)[0] for h in header]
    convert = pacsv.ConvertOptions(column_types={h: pa.string() for h in header}, strings_can_be_null=False)
    table = pacsv.read_csv(path, read_options=opts, parse_options=parse, convert_options=convert)
    return table.rename_columns(names)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_pylist(), dtype=object)


def vocabulary(tokens: Sequence[str]) -> List[str]:
    """Distinct tokens, sorted numerically when all are integers, else as strings."""
    distinct = set(tokens)
    if all(t.lstrip("-").isdigit() for t in distinct):
        return sorted(distinct, key=int)
    return sorted(distinct)


def encode(tokens: np.ndarray, vocab: List[str], what: str) -> np.ndarray:
    """Raw tokens -> dense ids (int64) through ``vocab``; unknown tokens are an error."""
    index = {t: i for i, t in enumerate(vocab)}
    try:
        return np.fromiter((index[t] for t in tokens), dtype=np.int64, count=len(tokens))
    except KeyError as e:
        raise ValueError(f"{what}: token {e.args[0]!r} is not in the vocabulary") from None


def _side_users(users: pa.Table, vocab: Dict[str, List[str]]) -> pa.Table:
    raw = {n: _strings(users, n) for n in USER_FEATURES}
    order = np.argsort(encode(raw["user_id"], vocab["user_id"], "ml-100k.user user_id"))
    cols = {n: pa.array(encode(raw[n][order], vocab[n], f"ml-100k.user {n}")) for n in USER_FEATURES}
    return pa.table(cols)


def _genre_bags(classes: np.ndarray, vocab: List[str]) -> List[List[int]]:
    index = {t: i for i, t in enumerate(vocab)}
    return [sorted(index[g] for g in c.split(" ") if g) for c in classes]


def _side_items(items: pa.Table, vocab: Dict[str, List[str]]) -> pa.Table:
    ids = encode(_strings(items, "item_id"), vocab["item_id"], "ml-100k.item item_id")
    order = np.argsort(ids)
    year = encode(_strings(items, "release_year")[order], vocab["release_year"], "ml-100k.item release_year")
    genres = _genre_bags(_strings(items, "class")[order], vocab["genres"])
    return pa.table({"item_id": pa.array(ids[order]), "release_year": pa.array(year),
                     "genres": pa.array(genres, pa.list_(pa.int64()))})


def build_vocab(users: pa.Table, items: pa.Table) -> Dict[str, List[str]]:
    vocab = {n: vocabulary(_strings(users, n).tolist()) for n in USER_FEATURES}
    vocab["item_id"] = vocabulary(_strings(items, "item_id").tolist())
    vocab["release_year"] = vocabulary(_strings(items, "release_year").tolist())
    vocab["genres"] = vocabulary([g for c in _strings(items, "class") for g in c.split(" ") if g])
    for n in ("user_id", "item_id"):
        table = users if n == "user_id" else items
        if len(vocab[n]) != table.num_rows:
            raise ValueError(f"ml-100k: {n} is not unique in its side file")
    return vocab


def split_bounds(rows: int) -> List[Tuple[str, int, int]]:
    """``(split, start, stop)`` over the time-sorted ratings: 80/10/10, the remainder to train."""
    val = int(rows * SPLITS[1][1])
    test = int(rows * SPLITS[2][1])
    train = rows - val - test
    return [("train", 0, train), ("val", train, train + val), ("test", train + val, rows)]


def _ratings(inter: pa.Table, vocab: Dict[str, List[str]]) -> Dict[str, np.ndarray]:
    """Interactions encoded and sorted by (timestamp, user, item)."""
    user = encode(_strings(inter, "user_id"), vocab["user_id"], "ml-100k.inter user_id")
    item = encode(_strings(inter, "item_id"), vocab["item_id"], "ml-100k.inter item_id")
    rating = np.asarray([float(x) for x in _strings(inter, "rating")])
    ts = np.asarray([int(float(x)) for x in _strings(inter, "timestamp")], dtype=np.int64)
    order = np.lexsort((item, user, ts))  # last key is primary
    return {"user_id": user[order], "item_id": item[order], "rating": rating[order], "timestamp": ts[order]}


def _split_table(r: Dict[str, np.ndarray], rows: np.ndarray, users: pa.Table, items: pa.Table) -> pa.Table:
    u, i = r["user_id"][rows], r["item_id"][rows]
    cols: Dict[str, pa.Array] = {"label": pa.array((r["rating"][rows] >= 4).astype(np.int8))}
    for name in SPARSE:
        side, key = (users, u) if name in USER_FEATURES else (items, i)
        cols[name] = side.column(name).take(pa.array(key))
    cols["rating"] = pa.array(r["rating"][rows].astype(np.int8))
    cols["timestamp"] = pa.array(r["timestamp"][rows])
    return pa.table(cols)


def _write_parquet(path: Path, table: pa.Table, row_group_size: int) -> None:
    atomic_write(path, lambda tmp: pq.write_table(table, tmp, row_group_size=row_group_size, compression="snappy"))


def convert_ml100k(src: str | Path, out_dir: str | Path, seed: int = 0, row_group_size: int = 5000) -> Manifest:
    """Convert ``src/ml-100k.{inter,user,item}`` into ``out_dir`` (see the module doc)."""
    src, out = Path(src), Path(out_dir)
    inter, users_raw, items_raw = (read_atomic(src / f"ml-100k.{n}") for n in ("inter", "user", "item"))
    vocab = build_vocab(users_raw, items_raw)
    users, items = _side_users(users_raw, vocab), _side_items(items_raw, vocab)
    r = _ratings(inter, vocab)
    splits: Dict[str, SplitInfo] = {}
    stats: Dict[str, dict] = {"ctr": {}, "time_range": {}}
    for name, a, b in split_bounds(len(r["timestamp"])):
        rows = np.arange(a, b)
        if name == "train":
            rows = np.random.default_rng(seed).permutation(rows)
        table = _split_table(r, rows, users, items)
        rel = f"{name}/part-00000.parquet"
        _write_parquet(out / rel, table, row_group_size)
        splits[name] = SplitInfo(files=[rel], rows=b - a)
        stats["ctr"][name] = float(np.mean(r["rating"][a:b] >= 4))
        stats["time_range"][name] = [int(r["timestamp"][a]), int(r["timestamp"][b - 1])]
    _write_parquet(out / "side/users.parquet", users, row_group_size)
    _write_parquet(out / "side/items.parquet", items, row_group_size)
    atomic_write_text(out / "side/vocab.json", json.dumps(vocab, indent=1) + "\n")
    schema = FeatureSchema(
        label="label",
        dense=(),
        sparse=tuple(SparseFeature(n, len(vocab[n]), n in MULTI_HOT) for n in SPARSE),
    )
    stats["generator"] = {
        "kind": "movielens-100k", "source": "recbole==1.2.1 wheel, recbole/dataset_example/ml-100k",
        "label": "rating >= 4", "split": "by (timestamp, user, item): 80/10/10 train/val/test",
        "train_row_order": f"permuted with seed {seed}", "seed": seed,
        "ratings": int(len(r["timestamp"])), "users": users.num_rows, "items": items.num_rows,
    }
    manifest = Manifest(schema=schema, splits=splits, stats=stats)
    write_manifest(out, manifest)
    add_ranking_section(out, RankingSpec(
        user_key="user_id", item_key="item_id",
        user=SideTableSpec("side/users.parquet", "user_id", USER_FEATURES),
        item=SideTableSpec("side/items.parquet", "item_id", ITEM_FEATURES),
    ))
    return manifest
