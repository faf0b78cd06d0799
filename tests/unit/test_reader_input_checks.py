"""Bad input is named where it is (file, row group, row, column) instead of wrecking the
model or crashing deep in numpy: non-finite dense values, every integer id width, manifest
fields of the wrong type or a stale row count, and bad eval files found before training."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactrec.data.reader.manifest import read_manifest
from compactrec.data.reader.parquet import DataError, ParquetReader


def _copy(tiny_data: Path, tmp_path: Path, change: Callable[[pa.Table], pa.Table], split: str = "eval") -> Path:
    """A copy of the tiny data set whose first ``split`` shard is rewritten by ``change``
    (row groups of 512 rows: the eval shard has two)."""
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    path = root / read_manifest(root).splits[split].files[0]
    pq.write_table(change(pq.read_table(path)), path, row_group_size=512)
    return root


def _set(t: pa.Table, name: str, values: np.ndarray, type: pa.DataType = None) -> pa.Table:
    return t.set_column(t.schema.get_field_index(name), name, pa.array(values, type=type))


def _dense(value: float, row: int = 700, name: str = "int_4", dtype=np.float32):
    def change(t: pa.Table) -> pa.Table:
        x = t.column(name).to_numpy(zero_copy_only=False).astype(dtype)
        x[row] = value
        return _set(t, name, x)

    return change


def _read(root: Path, split: str = "eval", **kw) -> ParquetReader:
    m = read_manifest(root)
    r = ParquetReader(m.split_files(root, split), m.schema, 64, shuffle=False, **kw)
    for _ in r.epoch(0):
        pass
    return r


@pytest.mark.parametrize("transform", ["log1p", "none"])
@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=["inf", "-inf", "nan"])
def test_non_finite_dense_value_is_named(tiny_data: Path, tmp_path: Path, value: float, transform: str):
    root = _copy(tiny_data, tmp_path, _dense(value))
    with pytest.raises(DataError, match=rf"part-00000.parquet row group 1: column 'int_4' row 188 is {value}; dense values must be finite"):
        _read(root, dense_transform=transform)


def test_a_float64_beyond_float32_is_named(tiny_data: Path, tmp_path: Path):
    root = _copy(tiny_data, tmp_path, _dense(1e300, dtype=np.float64))
    with pytest.raises(DataError, match=r"row 188 is 1e\+300 \(overflows float32\)"):
        _read(root)


def test_nulls_stay_allowed_and_zero_policy_counts(tiny_data: Path, tmp_path: Path):
    def change(t: pa.Table) -> pa.Table:
        x = t.column("int_4").to_numpy(zero_copy_only=False).astype(np.float32)
        x[[3, 600, 601]] = [np.inf, np.nan, -np.inf]
        mask = np.zeros(len(x), bool)
        mask[10] = True  # a real null (an empty Criteo field) next to them
        return t.set_column(t.schema.get_field_index("int_4"), "int_4", pa.array(x, mask=mask))

    root = _copy(tiny_data, tmp_path, change)
    m = read_manifest(root)
    r = ParquetReader(m.split_files(root, "eval"), m.schema, 1024, shuffle=False, pad_last=True, non_finite="zero")
    batch = next(iter(r.epoch(0)))
    col = m.schema.dense.index("int_4")
    assert r.stats()["non_finite_values"] == 3
    assert np.isfinite(batch.dense_features.numpy()).all()
    assert float(batch.dense_features[3, col]) == 0.0 and float(batch.dense_features[10, col]) == 0.0


@pytest.mark.parametrize("arrow_type", [pa.int16(), pa.int32(), pa.uint16(), pa.uint32(), pa.uint64()], ids=str)
def test_every_integer_id_type_reads_like_int64(tiny_data: Path, tmp_path: Path, arrow_type: pa.DataType):
    def narrow(t: pa.Table) -> pa.Table:
        for name in [f for f in t.column_names if f.startswith("cat_")]:
            t = _set(t, name, t.column(name).to_numpy(), arrow_type)
        return t

    root = _copy(tiny_data, tmp_path, narrow)
    m = read_manifest(root)
    want = ParquetReader(m.split_files(tiny_data, "eval"), m.schema, 256, shuffle=False)
    got = ParquetReader(m.split_files(root, "eval"), m.schema, 256, shuffle=False)
    for a, b in zip(want.epoch(0), got.epoch(0)):
        assert np.array_equal(a.sparse_features.values().numpy(), b.sparse_features.values().numpy())


@pytest.mark.parametrize("bad", [-1, "card"], ids=["negative", "cardinality"])
def test_an_int32_id_outside_the_table_is_named(tiny_data: Path, tmp_path: Path, bad):
    card = read_manifest(tiny_data).schema.sparse[2].cardinality
    value = card if bad == "card" else bad

    def change(t: pa.Table) -> pa.Table:
        ids = t.column("cat_2").to_numpy().astype(np.int32)
        ids[17] = value
        return _set(t, "cat_2", ids)

    root = _copy(tiny_data, tmp_path, change)
    with pytest.raises(DataError, match=rf"row group 0: column 'cat_2' row 17 has id {value} outside \[0, {card}\)"):
        _read(root)


def _edit_manifest(root: Path, edit: Callable[[dict], None]) -> None:
    path = root / "_manifest.json"
    obj = json.loads(path.read_text())
    edit(obj)
    path.write_text(json.dumps(obj))


def test_a_manifest_field_of_the_wrong_type_names_file_and_field(tiny_data: Path, tmp_path: Path):
    root = tmp_path / "m"
    shutil.copytree(tiny_data, root)
    _edit_manifest(root, lambda o: o["sparse"][3].update(cardinality=str(o["sparse"][3]["cardinality"])))
    with pytest.raises(ValueError, match=r"_manifest.json: malformed manifest: sparse\[3\] \('cat_3'\) cardinality is '\d+' \(a str\)"):
        read_manifest(root)


def test_a_stale_row_count_in_the_manifest_is_refused(tiny_data: Path, tmp_path: Path):
    from compactrec.trainer.loop import _check_rows

    root = tmp_path / "m"
    shutil.copytree(tiny_data, root)
    _edit_manifest(root, lambda o: o["splits"]["train"].update(rows=o["splits"]["train"]["rows"] + 1))
    m = read_manifest(root)
    reader = ParquetReader(m.split_files(root, "train"), m.schema, 64)
    with pytest.raises(DataError, match=r"split 'train' says 4097 rows; its 2 files hold 4096"):
        _check_rows(reader, m, str(root), "train")


def test_eval_files_are_checked_before_reading(tiny_data: Path, tmp_path: Path):
    card = read_manifest(tiny_data).schema.sparse[5].cardinality

    def later_row_group(t: pa.Table) -> pa.Table:  # row group 1: found from the footer's statistics
        ids = t.column("cat_5").to_numpy().copy()
        ids[900] = card
        return _set(t, "cat_5", ids)

    root = _copy(tiny_data, tmp_path, later_row_group)
    m = read_manifest(root)
    reader = ParquetReader(m.split_files(root, "eval"), m.schema, 64)
    problems = reader.check_ahead()
    assert len(problems) == 1 and "row group 1: column 'cat_5' row 388 has id" in problems[0]
    assert reader.check_ahead(rank=1, world_size=2) == []  # one file: rank 0's share


def test_a_non_finite_dense_value_in_a_later_row_group_is_found_from_the_footer(tiny_data: Path, tmp_path: Path):
    root = _copy(tiny_data, tmp_path, _dense(np.inf))
    m = read_manifest(root)
    problems = ParquetReader(m.split_files(root, "eval"), m.schema, 64).check_ahead()
    assert len(problems) == 1 and "row group 1: column 'int_4' row 188 is inf" in problems[0]
