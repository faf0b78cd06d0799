"""Data pipeline throughput: Criteo TSV -> Parquet conversion, and the reader against bare
pyarrow on the converted shards, measured in one run.

    python benchmarks/data.py [--rows 500000] [--workers 1 2] [--repeats 5] [--train-steps 300]

1. convert: a Criteo-format TSV of ``--rows`` lines (skewed ids, 10% empty categorical and
   20% empty integer fields, a few negatives), plain and gzip, converted with
   ``--max-ids 40000000`` (hashed ids, MLPerf DLRMv2's cap) by 1 and 2 worker processes:
   MB/s of input text and rows/s, in all and per worker process (fresh output each run).
2. read: on the converted shards, ``ParquetReader`` (shuffled, validated, one rank of 1 and
   rank 0 of 2) delivering ``Batch(dense, KJT, labels)``, against a bare
   ``ParquetFile.iter_batches`` pass over the same files (rank 0 of 2: the same row groups
   only), alternating, medians; the goal is >= 50% of bare.
3. train: the full-table DLRM's samples/s on one local worker (``benchmarks/reader.py``'s
   measurement, on synthetic data): the reader must deliver more rows/s than that.
Everything runs on one core per process (OMP/arrow threads = 1). The machine is shared:
compare figures of one run.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

# Conversion workers are spawned and re-import this file: torch and the reader (torchrec)
# are imported inside main(), not here, so that a worker starts in a second, not ten.
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from compactrec.data.convert.criteo import DENSE_NAMES, LABEL, SPARSE_NAMES  # noqa: E402
from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo  # noqa: E402
from compactrec.data.convert.id_map import IdMapSpec  # noqa: E402
from compactrec.data.reader.manifest import read_manifest  # noqa: E402

_HEX = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex_strings(values: np.ndarray, empty: np.ndarray) -> pa.Array:
    """uint32 values -> 8-hex-digit strings (null where empty), without per-row Python."""
    digits = _HEX[(values[:, None] >> (4 * np.arange(7, -1, -1, dtype=np.uint64))) & 15]
    offsets = np.arange(0, 8 * len(values) + 1, 8, dtype=np.int32)
    arr = pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(digits.tobytes()))
    return pa.array(arr.to_numpy(zero_copy_only=False), mask=empty, type=pa.string())


def write_tsv(path: Path, rows: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    cols = {LABEL: pa.array(rng.random(rows) < 0.25).cast(pa.int8())}
    for name in DENSE_NAMES:
        x = np.floor(np.exp(rng.normal(1.5, 1.5, rows))).astype(np.int64) - (rng.random(rows) < 0.02) * 3
        cols[name] = pa.array(x, mask=rng.random(rows) < 0.2)
    for f, name in enumerate(SPARSE_NAMES):
        n = int(10 ** rng.uniform(1, 7))  # 10 to 10M distinct values, Zipf-skewed
        rank = np.minimum(rng.zipf(1.1, rows), n) - 1
        values = (rank.astype(np.uint64) * np.uint64(2654435761) + np.uint64(f)) % np.uint64(1 << 32)
        cols[name] = _hex_strings(values, rng.random(rows) < 0.1)
    options = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    pcsv.write_csv(pa.table(cols), str(path), write_options=options)


def convert_run(inputs, out: Path, workers: int) -> tuple[float, int]:
    shutil.rmtree(out, ignore_errors=True)
    opts = ConvertOptions(id_map=IdMapSpec("hash", max_ids=40_000_000), workers=workers, progress=False,
                          piece_bytes=max(1 << 20, sum(os.path.getsize(p) for p in inputs) // (4 * workers)))
    t = time.perf_counter()
    m = convert_criteo(inputs, out, opts)
    return time.perf_counter() - t, m.splits["train"].rows


def bare_pass(reader, epoch: int, batch_size: int) -> int:
    """pyarrow alone over the row groups this rank reads (decode only)."""
    rows, files = 0, {}
    for ref in reader.assignment(epoch)[reader.rank]:
        pf = files.get(ref.file) or files.setdefault(ref.file, pq.ParquetFile(ref.file))
        for rb in pf.iter_batches(batch_size=batch_size, row_groups=[ref.index], columns=reader.columns, use_threads=False):
            rows += rb.num_rows
    return rows


def reader_pass(reader, epoch: int) -> int:
    return sum(b.labels.shape[0] for b in reader.epoch(epoch))


def _timed(fn) -> float:
    t = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t)


def train_samples_per_s(steps: int, batch_size: int) -> float:
    spec = importlib.util.spec_from_file_location("bench_reader", Path(__file__).with_name("reader.py"))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    data = Path("datasets/bench_reader")
    if not (data / "_manifest.json").exists():
        from compactrec.trainer.config import SynthConfig
        from compactrec.data.datasets.synthetic import generate

        generate(SynthConfig(rows_train=200_000, rows_eval=20_000, shards_train=4, row_group_size=65536), data)
    return mod.train_throughput(data, steps, batch_size)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="datasets/bench_data")
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch

    from compactrec.logs import quiet_third_party
    from compactrec.data.reader.parquet import ParquetReader

    quiet_third_party()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    root = Path(args.dir)
    raw = root / "raw" / "day_0"
    if not raw.exists():
        raw.parent.mkdir(parents=True, exist_ok=True)
        print(f"writing {args.rows:,} Criteo-format lines to {raw} ...", flush=True)
        write_tsv(raw, args.rows)
        with open(raw, "rb") as src, gzip.open(raw.with_suffix(".gz"), "wb", compresslevel=6) as dst:
            shutil.copyfileobj(src, dst)
    mb = os.path.getsize(raw) / 1e6
    result: dict = {"input_mb": mb, "convert": {}}
    for label, inputs, workers in [("plain", [str(raw)], w) for w in args.workers] + [("gz", [str(raw.with_suffix(".gz"))], 1)]:
        seconds, rows = convert_run(inputs, root / "out", workers)
        per = {"mb_per_s": mb / seconds / workers, "rows_per_s": rows / seconds / workers}
        result["convert"][f"{label}_w{workers}"] = {"seconds": seconds, "rows": rows, "per_worker": per,
                                                    "total_mb_per_s": mb / seconds, "total_rows_per_s": rows / seconds}
        print(f"convert {label:5s} x{workers}: {seconds:6.2f} s  {mb / seconds:6.1f} MB/s {rows / seconds:10,.0f} rows/s"
              f"  = per worker {per['mb_per_s']:5.1f} MB/s {per['rows_per_s']:10,.0f} rows/s", flush=True)

    out = root / "out"
    m = read_manifest(out)
    files = m.split_files(out, "train")
    result["read"] = {}
    for world in (1, 2):
        reader = ParquetReader(files, m.schema, args.batch_size, rank=0, world_size=world, shuffle=True, validate=True)
        reader_pass(reader, 0)  # warm up: page cache, imports
        bare, ours = [], []
        for i in range(args.repeats):
            bare.append(_timed(lambda: bare_pass(reader, i, args.batch_size)))
            ours.append(_timed(lambda: reader_pass(reader, i)))
        b, o = statistics.median(bare), statistics.median(ours)
        result["read"][f"rank0_of_{world}"] = {"bare_rows_per_s": b, "reader_rows_per_s": o, "ratio": o / b,
                                               "runs_bare": bare, "runs_reader": ours}
        print(f"read rank 0 of {world}: bare pyarrow {b:12,.0f} rows/s   reader -> KJT {o:12,.0f} rows/s  = {o / b:.0%} of bare")
    if args.train_steps > 0:
        train = train_samples_per_s(args.train_steps, args.batch_size)
        result["train_samples_per_s"] = train
        o = result["read"]["rank0_of_1"]["reader_rows_per_s"]
        print(f"training (full DLRM, 1 worker, 1 thread): {train:,.0f} samples/s; reader/trainer = {o / train:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
