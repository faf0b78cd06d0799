"""Reader: disjoint deterministic row groups per rank, equal step counts, exact KJT
contents (one-hot and multi-hot), eval padding, clear errors on bad input (or skipping it
with a count), file:// URIs, and the resume cursor (exact with the same world size, every
unread row once with another)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import List, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature, read_manifest
from compactrec.data.reader.parquet import DataError, ParquetReader


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


def test_log1p_transform_is_numpys_within_one_ulp_with_nulls_and_negatives_at_zero():
    from compactrec.data.reader.columns import log1p_counts

    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.array([np.nan, -np.inf, -3.5, -0.0, 0.0, 1e-30, 1e-8, 1e-4, 0.5, 1, 7, 1e6, 3.4e38, np.inf], np.float32),
        (rng.standard_normal(10_000) * 100).astype(np.float32),
    ]).reshape(2, -1)  # 2-D, as the reader's (D, rows) block
    want = np.log1p(np.fmax(x, 0.0))
    got = x.copy()
    log1p_counts(got)
    assert not np.isnan(got).any() and got[0, :5].tolist() == [0.0] * 5  # null, -inf, negatives -> 0
    assert got[0, 13] == np.inf
    ulps = np.abs(got.view(np.int32).astype(np.int64) - want.view(np.int32).astype(np.int64))
    assert ulps.max() <= 1, ulps.max()


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


@pytest.mark.parametrize("data", ["tiny_data", "tiny_multihot_data"])
def test_kjt_values_per_key_match_its_lengths(data: str, request):
    """The reader hands TorchRec each key's value count (length_per_key): it must be what
    the lengths say, one-hot or multi-hot, and split the values into the Parquet columns."""
    root = request.getfixturevalue(data)
    m = read_manifest(root)
    table = pq.read_table(root / m.splits["train"].files[0])
    kjt = next(iter(_reader(root, batch_size=50))).sparse_features
    want = kjt.lengths().view(len(kjt.keys()), -1).sum(1).tolist()
    assert kjt.length_per_key() == want
    assert kjt.to_dict()["cat_1"].values().tolist() == table.column("cat_1").to_pylist()[:50]


@pytest.mark.parametrize("data", ["tiny_data", "tiny_multihot_data"])
def test_kjt_offsets_per_key_and_int64_values(data: str, request):
    """Row groups hold 32-bit ids, batches int64 ones; the offsets per key handed to TorchRec
    are the running sums of the values per key."""
    kjt = next(iter(_reader(request.getfixturevalue(data), batch_size=50, shuffle=True))).sparse_features
    assert kjt.values().dtype == torch.int64
    per_key = kjt.lengths().view(len(kjt.keys()), -1).sum(1)
    assert kjt.offset_per_key() == [0, *torch.cumsum(per_key, 0).tolist()]


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


# ---- resume cursor, unequal shards, URIs, skipping bad files ---------------------------
ID_SCHEMA = FeatureSchema(
    label="label", dense=("rid",), sparse=(SparseFeature("a", 7), SparseFeature("b", 5, multi_hot=True))
)


def write_id_shards(root: Path, rows: Sequence[int], row_group: int) -> List[str]:
    """Shards whose rows carry a unique id ``rid`` (read back with dense_transform="none");
    ``a = rid % 7``, bag ``b`` = ``[rid % 5] * (1 + rid % 3)``."""
    root.mkdir(parents=True, exist_ok=True)
    files, first = [], 0
    for i, n in enumerate(rows):
        rid = np.arange(first, first + n)
        table = pa.table({
            "label": pa.array((rid % 2).astype(np.int8)),
            "rid": pa.array(rid.astype(np.float32)),
            "a": pa.array(rid % 7),
            "b": pa.array([[int(r % 5)] * int(1 + r % 3) for r in rid], pa.list_(pa.int64())),
        })
        files.append(str(root / f"part-{i:05d}.parquet"))
        pq.write_table(table, files[-1], row_group_size=row_group)
        first += n
    return files


def id_reader(files: Sequence[str], batch_size: int, **kw) -> ParquetReader:
    kw.setdefault("shuffle", True)
    return ParquetReader(files, ID_SCHEMA, batch_size, dense_transform="none", seed=5, **kw)


def rids(batch) -> List[int]:
    return batch.dense_features[: batch.valid_rows, 0].long().tolist()


def assert_same_batch(x, y) -> None:
    assert torch.equal(x.dense_features, y.dense_features) and torch.equal(x.labels, y.labels)
    assert torch.equal(x.sparse_features.values(), y.sparse_features.values())
    assert torch.equal(x.sparse_features.lengths(), y.sparse_features.lengths())
    assert x.num_valid == y.num_valid


def _json(d: dict) -> dict:
    return json.loads(json.dumps(d))


@pytest.fixture(scope="module")
def id_files(tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    """4 shards of unequal size (2300 rows), row groups of 200."""
    return write_id_shards(tmp_path_factory.mktemp("ids"), [900, 700, 450, 250], 200)


def test_cursor_resume_same_world_size_is_exact_at_every_step(id_files: List[str]):
    world, b = 2, 96
    full = [list(id_reader(id_files, b, rank=r, world_size=world).epoch(1)) for r in range(world)]
    steps = id_reader(id_files, b, world_size=world).num_steps(1)
    assert [len(f) for f in full] == [steps, steps]
    for stop in range(steps + 1):
        cursors = []
        for r in range(world):
            reader = id_reader(id_files, b, rank=r, world_size=world)
            it = reader.epoch(1)
            for _ in range(stop):
                next(it)
            cursors.append(_json(reader.cursor()))
            it.close()
        assert cursors[0] == cursors[1] and cursors[0]["step"] == stop  # any rank's cursor will do
        for r in range(world):
            resumed = id_reader(id_files, b, rank=r, world_size=world)
            assert resumed.num_steps(1, cursors[0]) == steps - stop
            rest = list(resumed.epoch(1, cursor=cursors[0]))
            assert len(rest) == steps - stop
            for x, y in zip(rest, full[r][stop:]):
                assert_same_batch(x, y)


def _consumed_and_cursor(files, b, world, stop, epoch=0):
    seen, cursor = [], None
    for r in range(world):
        reader = id_reader(files, b, rank=r, world_size=world)
        it = reader.epoch(epoch)
        for _ in range(stop):
            seen += rids(next(it))
        cursor = _json(reader.cursor())
        it.close()
    return seen, cursor


@pytest.mark.parametrize("old,new", [(2, 1), (1, 2), (2, 3)])
def test_cursor_resume_with_another_world_size_loses_only_last_partial_batches(id_files, old, new):
    b, total = 64, 2300
    for stop in (0, 3, 7):
        seen, cursor = _consumed_and_cursor(id_files, b, old, stop)
        readers = [id_reader(id_files, b, rank=r, world_size=new) for r in range(new)]
        steps = readers[0].num_steps(0, cursor)
        assert all(rd.num_steps(0, cursor) == steps for rd in readers)  # every new rank agrees
        for rd in readers:
            batches = list(rd.epoch(0, cursor=cursor))
            assert len(batches) == steps
            seen += [i for bt in batches for i in rids(bt)]
            assert rd.cursor()["step"] == stop + steps
        assert len(seen) == len(set(seen))  # nothing twice
        assert total - len(seen) < new * b  # only each new rank's final partial batch is lost


def test_cursor_at_end_of_epoch_yields_nothing_and_refuses_other_data(id_files, tmp_path):
    _, cursor = _consumed_and_cursor(id_files, 64, 2, id_reader(id_files, 64, world_size=2).num_steps(0))
    assert id_reader(id_files, 64, world_size=1).num_steps(0, cursor) == 0
    assert list(id_reader(id_files, 64, world_size=1).epoch(0, cursor=cursor)) == []
    with pytest.raises(ValueError, match="epoch 0, not epoch 1"):
        id_reader(id_files, 64).num_steps(1, cursor)
    other = write_id_shards(tmp_path / "o", [900, 700, 450, 251], 200)
    with pytest.raises(DataError, match="other data"):
        id_reader(other, 64).num_steps(0, cursor)
    with pytest.raises(DataError, match="other data"):
        id_reader(id_files[:3], 64).num_steps(0, cursor)
    with pytest.raises(DataError, match="other data"):
        ParquetReader(id_files, ID_SCHEMA, 64, shuffle=True, seed=6).num_steps(0, cursor)


@pytest.mark.parametrize("b", [96, 300])
def test_batches_held_by_the_consumer_keep_their_rows(id_files, b):
    """The reader reuses its large arrays once nothing refers to them: batches kept (and
    read ahead of) must not change when later ones are read, and equal batches consumed
    one at a time (b=300: batches span row groups of 200)."""
    held = list(id_reader(id_files, b, prefetch=2).epoch(0))
    streamed = [(x.dense_features.clone(), x.labels.clone(), x.sparse_features.values().clone())
                for x in id_reader(id_files, b, prefetch=2).epoch(0)]
    assert len(held) == len(streamed)
    for x, (dense, labels, values) in zip(held, streamed):
        assert torch.equal(x.dense_features, dense) and torch.equal(x.labels, labels)
        assert torch.equal(x.sparse_features.values(), values)
    seen = [i for x in held for i in rids(x)]
    assert len(seen) == len(set(seen)) == len(held) * b


def test_cursor_names_each_ranks_next_shard_row_group_and_offset(id_files):
    reader = id_reader(id_files, 150, world_size=2, shuffle=False)
    it = reader.epoch(0)
    next(it), next(it)
    c = reader.cursor()
    it.close()
    # 300 rows read per rank; rank 0 has row groups 0, 2, 4.., rank 1 has 1, 3, 5.. (200 rows each)
    assert c["positions"][0] == {"file": id_files[0], "row_group": 2, "offset": 100}
    assert c["positions"][1] == {"file": id_files[0], "row_group": 3, "offset": 100}


def test_unequal_shards_give_every_rank_the_same_step_count(tmp_path):
    files = write_id_shards(tmp_path, [1000, 130, 40, 7], 100)
    for world in (2, 3):
        counts = [len(list(id_reader(files, 50, rank=r, world_size=world).epoch(0))) for r in range(world)]
        assert len(set(counts)) == 1 and counts[0] == id_reader(files, 50, world_size=world).num_steps(0)


def test_file_uris_read_like_local_paths(tiny_data: Path):
    uri = "file://" + str(tiny_data.resolve())
    m = read_manifest(uri)
    files = m.split_files(uri, "train")
    assert files[0].startswith("file:///")
    local = _reader(tiny_data, batch_size=256, shuffle=True)
    remote = ParquetReader(files, m.schema, 256, shuffle=True)
    for x, y in zip(local.epoch(0), remote.epoch(0)):
        assert_same_batch(x, y)


def _corrupt_row_group(path: str, rg: int) -> None:
    col = pq.ParquetFile(path).metadata.row_group(rg).column(1)
    with open(path, "r+b") as f:
        f.seek(col.dictionary_page_offset or col.data_page_offset)
        f.write(b"\xff" * 12)


def test_bad_files_are_skipped_with_a_count_when_configured(id_files, tmp_path):
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"PAR1 not really parquet")
    empty = tmp_path / "empty.parquet"
    pq.write_table(pq.read_table(id_files[0]).slice(0, 0), empty)
    truncated = tmp_path / "trunc.parquet"
    truncated.write_bytes(Path(id_files[1]).read_bytes()[:-100])
    files = [str(junk), *id_files[:2], str(empty), str(truncated), str(tmp_path / "missing.parquet")]
    with pytest.raises(DataError, match="junk.parquet: not a readable Parquet file"):
        id_reader(files, 64)
    readers = [id_reader(files, 64, rank=r, world_size=2, on_bad_file="skip") for r in range(2)]
    assert readers[0].stats()["bad_files"] == 4
    assert {Path(f).name for f, _ in readers[0].bad_files} == {"junk.parquet", "empty.parquet", "trunc.parquet", "missing.parquet"}
    good = id_reader(id_files[:2], 64, world_size=2)
    assert readers[0].num_steps(0) == readers[1].num_steps(0) == good.num_steps(0)
    assert [g.gid for g in readers[1].assignment(0)[1]] == [g.gid for g in good.assignment(0)[1]]


def test_corrupt_row_group_names_file_or_is_padded_over(tmp_path):
    files = write_id_shards(tmp_path, [800, 800], 200)
    _corrupt_row_group(files[1], 2)
    with pytest.raises(DataError, match=r"part-00001.parquet row group 2: cannot read"):
        for _ in id_reader(files, 64, shuffle=False).epoch(0):
            pass
    readers = [id_reader(files, 64, rank=r, world_size=2, on_bad_file="skip") for r in range(2)]
    counts = [sum(1 for _ in rd.epoch(0)) for rd in readers]
    assert counts[0] == counts[1] == readers[0].num_steps(0)  # no rank stops early
    hit = [rd for rd in readers if rd.stats()["bad_row_groups"]]
    assert len(hit) == 1 and hit[0].stats()["rows_lost"] == 200 and hit[0].stats()["rows_padded"] > 0


def test_max_steps_caps_the_epoch_across_a_resume(id_files):
    _, cursor = _consumed_and_cursor(id_files, 64, 2, 2)
    full = id_reader(id_files, 64, world_size=2).num_steps(0)
    assert id_reader(id_files, 64, world_size=2, max_steps=5).num_steps(0, cursor) == 3
    assert id_reader(id_files, 64, world_size=2).num_steps(0, cursor) == full - 2
    assert id_reader(id_files, 64, world_size=1, max_steps=5).num_steps(0, cursor) == 3  # re-dealt, same cap


@pytest.mark.parametrize("size", [0, 1, 4, 8])
def test_prefetch_hands_over_every_item_then_the_error(size: int):
    """Items cross the reading thread's queue in groups: a partial last group, and the
    items made before an error, still arrive, in order, before the error is raised."""
    from compactrec.data.reader.prefetch import prefetch

    def items(fail: bool):
        yield from range(7)
        if fail:
            raise ValueError("bad row group")

    assert list(prefetch(lambda: items(False), size)) == list(range(7))
    got = []
    with pytest.raises(ValueError, match="bad row group"):
        for x in prefetch(lambda: items(True), size):
            got.append(x)
    assert got == list(range(7))


def test_ids_beyond_int32_keep_their_64_bits(tmp_path: Path):
    """A one-hot feature whose cardinality does not fit int32 keeps its ids 64-bit inside the
    row group (the int32 narrowing applies only when every cardinality fits): each row's id,
    shuffled or not, comes back exactly."""
    big = 3 * 2**31  # ids up to ~6.4e9
    schema = FeatureSchema(label="label", dense=("rid",), sparse=(SparseFeature("a", 7), SparseFeature("w", big)))
    rid = np.arange(700)
    wide = (rid.astype(np.int64) * 9_176_543 + 2**31 + 5) % big
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"label": pa.array((rid % 2).astype(np.int8)), "rid": pa.array(rid.astype(np.float32)),
                             "a": pa.array(rid % 7), "w": pa.array(wide)}), path, row_group_size=250)
    assert wide.max() > 2**32
    for shuffle in (False, True):
        reader = ParquetReader([str(path)], schema, 70, dense_transform="none", seed=5, shuffle=shuffle)
        got = {}
        for b in reader.epoch(0):
            ids = b.sparse_features.to_dict()["w"].values()
            assert ids.dtype == torch.int64
            for r, i in zip(rids(b), ids[: b.valid_rows].tolist()):
                got[r] = i
        assert got == {int(r): int(w) for r, w in zip(rid, wide)}, shuffle
