"""``compactrec convert``: raw data -> Parquet shards + ``_manifest.json`` (sub-commands).

    compactrec convert criteo INPUT... --out DIR [--split criteo_tb|kaggle|none] [--workers N]
                                        [--max-ids N [--id-map hash]] [--freq-map COUNTS_DIR]
                                        [--on-error fail|skip]
    compactrec convert criteo-count INPUT... --out COUNTS_DIR [--workers N]   (for --freq-map)

Examples::

    compactrec convert criteo raw/day_{0..23}.gz --out data/criteo_tb --split criteo_tb \\
        --max-ids 40000000 --workers 16
    compactrec convert criteo-count raw/day_{0..22}.gz --out data/counts --workers 16
    compactrec convert criteo raw/day_{0..23}.gz --out data/criteo_tb_freq --split criteo_tb \\
        --freq-map data/counts --max-ids 40000000

Re-running a command after an interruption continues it. ``add_parser(subparsers)``
registers the command on the ``compactrec`` parser (``compactrec/cli.py``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from compactrec.data.convert.criteo_splits import MODES

_MB = 1 << 20


DESCRIPTION = """\
Raw data -> Parquet shards + _manifest.json. Re-running a command after an interruption
continues it.

examples:
  compactrec convert criteo raw/day_{0..23}.gz --out data/criteo_tb --split criteo_tb --max-ids 40000000 --workers 16
  compactrec convert criteo-count raw/day_{0..22}.gz --out data/counts --workers 16
  compactrec convert criteo raw/day_{0..23}.gz --out data/criteo_tb_freq --split criteo_tb --freq-map data/counts --max-ids 40000000
"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("convert", help="raw data -> Parquet shards + _manifest.json",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="convert_command", required=True)
    c = sub.add_parser("criteo", help="Criteo click logs (day_N[.gz], train.txt) -> shards")
    _common(c)
    c.add_argument("--split", choices=MODES, default="none",
                   help="criteo_tb: days 0-22 train, day 23 halves val/test; kaggle: last 1/7 test; none: all train")
    c.add_argument("--max-ids", type=int, default=None, help="ids per feature, e.g. 40000000 (MLPerf DLRMv2)")
    c.add_argument("--id-map", choices=("raw", "hash", "freq"), default=None,
                   help="freq (default): ids by frequency, counted first unless --freq-map is given, at most "
                        "--max-ids (default 10,000,000) per feature; hash (default with --max-ids): MLPerf's "
                        "hashing modulo --max-ids; raw: value + 1 (tables of ~2^32 rows: only when asked)")
    c.add_argument("--freq-map", metavar="COUNTS_DIR", default=None, help="output of `convert criteo-count`")
    c.add_argument("--row-group-rows", type=int, default=1 << 18)
    c.add_argument("--compression", choices=("snappy", "zstd", "lz4", "gzip", "none"), default="snappy")
    c.set_defaults(fn=_cmd_criteo)
    k = sub.add_parser("criteo-count", help="count categorical values (the frequency map for --freq-map)")
    _common(k)
    k.set_defaults(fn=_cmd_count)
    return p


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--out", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: one per core)")
    p.add_argument("--on-error", choices=("fail", "skip"), default="fail",
                   help="a malformed line: stop with its file and line (fail) or drop and count it (skip)")
    p.add_argument("--shard-mb", type=float, default=512, help="MiB of input text per piece / output shard")
    p.add_argument("--block-mb", type=float, default=16, help="MiB of text parsed at a time (memory per worker)")
    p.add_argument("--no-progress", action="store_true")


def _id_map_spec(args: argparse.Namespace):
    from compactrec.data.convert.id_map import DEFAULT_FREQ_CAP, IdMapSpec

    kind = args.id_map
    if args.freq_map is not None:
        if kind not in (None, "freq"):
            raise ValueError(f"--freq-map goes with --id-map freq, not {kind}")
        kind = "freq"
    elif kind is None:
        kind = "hash" if args.max_ids is not None else "freq"  # --max-ids alone: MLPerf's hashing
    max_ids = args.max_ids if args.max_ids is not None or kind != "freq" else DEFAULT_FREQ_CAP
    return IdMapSpec(kind, max_ids, args.freq_map)


def _errors():
    from compactrec.data.convert.criteo_convert import ConvertError
    from compactrec.data.convert.pieces import MalformedLineError
    from compactrec.data.convert.text_input import TextError

    return (ConvertError, MalformedLineError, TextError, ValueError, FileNotFoundError)


def _cmd_criteo(args: argparse.Namespace) -> int:
    from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo

    try:
        opts = ConvertOptions(
            split=args.split, id_map=_id_map_spec(args), on_error=args.on_error, workers=args.workers,
            piece_bytes=int(args.shard_mb * _MB), block_bytes=int(args.block_mb * _MB),
            row_group_rows=args.row_group_rows, compression=args.compression, progress=not args.no_progress,
        )
        m = convert_criteo(args.inputs, args.out, opts)
    except _errors() as e:
        print(f"compactrec convert criteo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted("convert criteo", args.out)
    print(id_map_line(m))
    for split, info in m.splits.items():
        print(f"{split}: {info.rows:,} rows in {len(info.files)} shards, CTR {m.stats['ctr'].get(split, 0):.4f}")
    _print_malformed(m.stats["malformed"])
    print(f"wrote {os.path.join(args.out, '_manifest.json')}")
    return 0


def id_map_line(m: Any) -> str:
    """What the id map did, in one line: its kind, cap and the rows of every table."""
    d = m.stats["id_map"]
    how = {"freq": f"frequency map (counts in {d.get('counts_dir')}), at most {d.get('max_ids') or 'all'} ids per feature",
           "hash": f"hashed modulo --max-ids {d.get('max_ids')}", "raw": "raw values + 1 (asked for: --id-map raw)"}[d["kind"]]
    rows = ", ".join(f"{f.name} {f.cardinality:,}" for f in m.schema.sparse)
    return f"id map: {how}; rows per table: {rows}"


def _interrupted(command: str, out: str) -> int:
    """Ctrl-C: the pool's workers are already stopped; complete pieces are kept, a piece
    that was being written is redone by the next run (its temp file is removed then)."""
    print(f"\ncompactrec {command}: interrupted; complete pieces in {out} are kept: run the same command "
          "again to continue", file=sys.stderr)
    return 130  # 128 + SIGINT, as a shell reports it


def _print_malformed(bad: dict) -> None:
    if not bad["count"]:
        return
    print(f"skipped {bad['count']:,} malformed lines:", file=sys.stderr)
    for ex in bad["examples"][:10]:
        print(f"  {ex['file']}:{ex['line']}: {ex['reason']}", file=sys.stderr)


def _cmd_count(args: argparse.Namespace) -> int:
    from compactrec.data.convert.freq_count import count_criteo

    try:
        summary = count_criteo(
            args.inputs, args.out, workers=args.workers, piece_bytes=int(args.shard_mb * _MB),
            block_bytes=int(args.block_mb * _MB), on_error=args.on_error, progress=not args.no_progress,
        )
    except _errors() as e:
        print(f"compactrec convert criteo-count: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return _interrupted("convert criteo-count", args.out)
    distinct = {k: v["distinct"] for k, v in summary["features"].items()}
    print(f"counted {summary['rows']:,} rows; distinct values per feature: {distinct}")
    if summary["malformed"]:
        print(f"skipped {summary['malformed']:,} malformed lines", file=sys.stderr)
    return 0
