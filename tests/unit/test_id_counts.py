"""mixed_dim's id counts: a sample spread over every file (evenly spaced row groups),
sorted-unique counting, exact on the rows it reads, clear errors on bad ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactrec.data.reader.columns import DataError
from compactrec.data.reader.id_counts import count_ids, count_ids_sparse
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

SCHEMA = FeatureSchema("label", (), (SparseFeature("cat_0", 1000), SparseFeature("cat_1", 50)))


def _write(path: Path, lo: int, rows: int, group: int, seed: int) -> dict:
    """One file: cat_0 ids in [lo, lo + 100) (each file its own range), cat_1 multi-hot."""
    rng = np.random.default_rng(seed)
    c0 = rng.integers(lo, lo + 100, rows)
    c1 = [rng.integers(0, 50, rng.integers(1, 4)).tolist() for _ in range(rows)]
    pq.write_table(pa.table({"cat_0": c0, "cat_1": pa.array(c1, pa.list_(pa.int64()))}), path, row_group_size=group)
    return {"cat_0": c0, "cat_1": c1}


def test_every_row_read_gives_bincount(tmp_path: Path):
    cols = [_write(tmp_path / f"p{i}.parquet", 100 * i, 300, 64, i) for i in range(3)]
    got = count_ids([str(tmp_path / f"p{i}.parquet") for i in range(3)], SCHEMA, 10_000)
    want0 = np.bincount(np.concatenate([c["cat_0"] for c in cols]), minlength=1000)
    want1 = np.bincount(np.concatenate([np.concatenate(c["cat_1"]) for c in cols]).astype(np.int64), minlength=50)
    np.testing.assert_array_equal(got["cat_0"], want0)
    np.testing.assert_array_equal(got["cat_1"], want1)


def test_the_sample_reaches_every_file_and_the_middle_of_each(tmp_path: Path):
    """A 600-row budget over 3 files of 1000 rows: about 200 rows from each, from row
    groups spread through the file (not its first rows), and only ids that occur there."""
    cols = [_write(tmp_path / f"p{i}.parquet", 100 * i, 1000, 100, i) for i in range(3)]
    files = [str(tmp_path / f"p{i}.parquet") for i in range(3)]
    ids, occ = count_ids_sparse(files, SCHEMA, 600)["cat_0"]
    assert np.all(np.diff(ids) > 0) and occ.min() > 0
    per_file = [int(occ[(ids >= 100 * i) & (ids < 100 * i + 100)].sum()) for i in range(3)]
    assert per_file == [200, 200, 200]
    # evenly spaced groups of the first file: 0 and 9 (rows 0-99 and 900-999)
    want = np.bincount(np.concatenate([cols[0]["cat_0"][:100], cols[0]["cat_0"][900:]]), minlength=1000)
    np.testing.assert_array_equal(count_ids(files, SCHEMA, 600)["cat_0"][:100], want[:100])


def test_an_id_out_of_range_names_the_file_group_and_column(tmp_path: Path):
    pq.write_table(pa.table({"cat_0": [1, 2000], "cat_1": pa.array([[1], [2]], pa.list_(pa.int64()))}),
                   tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet row group 0: column 'cat_0' holds id 2000 outside \[0, 1000\)"):
        count_ids([str(tmp_path / "bad.parquet")], SCHEMA, 10)


def test_ranks_count_their_files_and_the_merge_equals_one_process(tmp_path: Path):
    """3 ranks over 4 files: rank r reads files r, r + 3; the all-gathered merge is one
    process's count, on every rank (so mixed_dim's id -> block maps agree)."""
    for i in range(4):
        _write(tmp_path / f"p{i}.parquet", 100 * i, 300, 64, i)
    files = [str(tmp_path / f"p{i}.parquet") for i in range(4)]
    alone = count_ids(files, SCHEMA, 800)
    parts = [count_ids_sparse(files[r::3], SCHEMA, 800 * len(files[r::3]) // 4) for r in range(3)]
    # each rank's own part is what it reads: rank 1 has only file 1's ids
    assert set(np.unique(parts[1]["cat_0"][0] // 100)) == {1}
    for r in range(3):
        got = count_ids(files, SCHEMA, 800, rank=r, world_size=3, gather=lambda mine, r=r: parts[:r] + [mine] + parts[r + 1:])
        for name in ("cat_0", "cat_1"):
            np.testing.assert_array_equal(got[name], alone[name])
