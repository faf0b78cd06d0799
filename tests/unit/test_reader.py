"""Reader: disjoint deterministic row groups per rank, equal step counts, exact KJT
contents (one-hot and multi-hot), eval padding, and clear errors on bad input."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import List

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from compactrec.trainer.data.manifest import read_manifest
from compactrec.trainer.data.reader import DataError, ParquetReader


def _reader(root: Path, split: str = "train", **kw) -> ParquetReader:
    m = read_manifest(root)
    return ParquetReader(m.split_files(root, split), m.schema, kw.pop("batch_size", 100), **kw)


def _p_true(root: Path, split: str) -> np.ndarray:
    m = read_manifest(root)
    return np.concatenate([pq.read_table(root / f, columns=["p_true"]).column(0).to_numpy() for f in m.splits[split].files])


def test_ranks_get_disjoint_row_groups_covering_the_split(tiny_data: Path):
    readers = [_reader(tiny_data, rank=r, world_size=2, shuffle=True, seed=3) for r in range(2)]
    for epoch in range(2):
        groups = [set((g.file, g.index) for g in readers[r].assignment(epoch)[r]) for r in range(2)]
        assert not groups[0] & groups[1]
        assert len(groups[0] | groups[1]) == len(readers[0].row_groups)
    assert readers[0].num_steps(0) == readers[1].num_steps(0)
    a0 = [g.gid for g in readers[0].assignment(0)[0]]
    assert a0 != [g.gid for g in readers[0].assignment(1)[0]]  # a new order each epoch
    assert a0 == [g.gid for g in _reader(tiny_data, rank=0, world_size=2, shuffle=True, seed=3).assignment(0)[0]]


def test_batches_have_the_batch_shape_and_steps_agree(tiny_data: Path):
    r = _reader(tiny_data, batch_size=128, shuffle=True)
    batches = list(r.epoch(0))
    assert len(batches) == r.num_steps(0) == 4096 // 128
    b = batches[0]
    assert b.dense_features.shape == (128, 13) and b.labels.shape == (128,)
    kjt = b.sparse_features
    assert kjt.keys() == [f"cat_{i}" for i in range(26)]
    assert kjt.values().shape == (26 * 128,) and bool((kjt.lengths() == 1).all())


def test_one_epoch_sees_every_row_once_shuffled_or_not(tiny_data: Path):
    """Labels and dense rows of all batches == the file rows (as a multiset)."""
    m = read_manifest(tiny_data)
    cols = [pq.read_table(tiny_data / f) for f in m.splits["train"].files]
    raw = np.concatenate([t.column("int_3").to_numpy() for t in cols])
    want = Counter(np.round(np.log1p(np.maximum(raw, 0)), 5).tolist())
    for shuffle in (False, True):
        r = _reader(tiny_data, batch_size=256, shuffle=shuffle)
        got = Counter(np.round(torch.cat([b.dense_features[:, 3] for b in r.epoch(0)]).numpy(), 5).tolist())
        assert got == want


def test_kjt_matches_the_parquet_rows(tiny_multihot_data: Path):
    m = read_manifest(tiny_multihot_data)
    table = pq.read_table(tiny_multihot_data / m.splits["train"].files[0])
    b = next(iter(_reader(tiny_multihot_data, batch_size=50)))
    d = b.sparse_features.to_dict()
    assert d["cat_0"].values().tolist() == table.column("cat_0").to_pylist()[:50]
    bags = table.column("cat_25").to_pylist()[:50]
    assert d["cat_25"].lengths().tolist() == [len(x) for x in bags]
    assert d["cat_25"].values().tolist() == [i for bag in bags for i in bag]
    assert b.labels.tolist() == [float(x) for x in table.column("label").to_pylist()[:50]]


def test_multi_hot_shuffle_keeps_bags_whole(tiny_multihot_data: Path):
    r = _reader(tiny_multihot_data, batch_size=4096, shuffle=True)
    b = next(iter(r.epoch(0)))
    m = read_manifest(tiny_multihot_data)
    rows = []
    for f in m.splits["train"].files:
        t = pq.read_table(tiny_multihot_data / f, columns=["cat_0", "cat_25"])
        rows += list(zip(t.column("cat_0").to_pylist(), map(tuple, t.column("cat_25").to_pylist())))
    d = b.sparse_features.to_dict()
    offs = d["cat_25"].offsets().tolist()
    vals = d["cat_25"].values().tolist()
    got = [(c, tuple(vals[offs[i] : offs[i + 1]])) for i, c in enumerate(d["cat_0"].values().tolist())]
    assert Counter(got) == Counter(rows)


def test_eval_pads_to_equal_steps_and_marks_padding(tiny_data: Path):
    rows = 0
    for rank in range(3):
        r = _reader(tiny_data, "eval", batch_size=300, rank=rank, world_size=3, pad_last=True)
        batches = list(r.epoch(0))
        assert len(batches) == r.num_steps(0)
        assert all(b.labels.shape[0] == 300 for b in batches)
        rows += sum(b.valid_rows for b in batches)
    assert rows == 1024


def _write(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path)
    return path


def _bad_copy(root: Path, tmp: Path, change) -> List[str]:
    m = read_manifest(root)
    table = change(pq.read_table(root / m.splits["eval"].files[0]))
    return [str(_write(tmp / "bad.parquet", table))]


def _read_all(files: List[str], root: Path) -> None:
    m = read_manifest(root)
    for _ in ParquetReader(files, m.schema, 64).epoch(0):
        pass


def test_missing_column_is_named(tiny_data: Path, tmp_path: Path):
    files = _bad_copy(tiny_data, tmp_path, lambda t: t.drop(["cat_7"]))
    with pytest.raises(DataError, match=r"bad.parquet: missing column 'cat_7'"):
        _read_all(files, tiny_data)


def test_wrong_dtype_is_named(tiny_data: Path, tmp_path: Path):
    def to_str(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("cat_3")
        return t.set_column(i, "cat_3", t.column("cat_3").cast(pa.string()))

    files = _bad_copy(tiny_data, tmp_path, to_str)
    with pytest.raises(DataError, match=r"bad.parquet: column 'cat_3' has type string; expected int64"):
        _read_all(files, tiny_data)


def test_id_out_of_range_is_named(tiny_data: Path, tmp_path: Path):
    card = read_manifest(tiny_data).schema.sparse[2].cardinality

    def too_big(t: pa.Table) -> pa.Table:
        ids = t.column("cat_2").to_numpy().copy()
        ids[17] = card
        return t.set_column(t.schema.get_field_index("cat_2"), "cat_2", pa.array(ids))

    files = _bad_copy(tiny_data, tmp_path, too_big)
    with pytest.raises(DataError, match=rf"bad.parquet row group 0: column 'cat_2' row 17 has id {card} outside"):
        _read_all(files, tiny_data)


def test_nan_label_is_named(tiny_data: Path, tmp_path: Path):
    def nan_label(t: pa.Table) -> pa.Table:
        y = t.column("label").to_numpy().astype(np.float32)
        y[5] = np.nan
        return t.set_column(t.schema.get_field_index("label"), "label", pa.array(y))

    files = _bad_copy(tiny_data, tmp_path, nan_label)
    with pytest.raises(DataError, match=r"bad.parquet row group 0: column 'label' row 5 is nan"):
        _read_all(files, tiny_data)


def test_empty_and_corrupt_files_are_named(tiny_data: Path, tmp_path: Path):
    empty = _bad_copy(tiny_data, tmp_path, lambda t: t.slice(0, 0))
    with pytest.raises(DataError, match=r"bad.parquet: empty shard"):
        _read_all(empty, tiny_data)
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"junk.parquet: not a readable Parquet file"):
        _read_all([str(junk)], tiny_data)
    with pytest.raises(DataError, match=r"nope.parquet: file not found"):
        _read_all([str(tmp_path / "nope.parquet")], tiny_data)
