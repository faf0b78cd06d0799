"""Reader throughput vs a bare pyarrow pass, and training samples/s, measured in one run.

    python benchmarks/reader.py [--rows 1000000] [--repeats 5] [--train-steps 300]

1. bare:   ``pq.ParquetFile(f).iter_batches(batch_size=B, columns=...)`` over the train shards
           (decode only: what pyarrow alone costs).
2. reader: ``ParquetReader`` (one rank, shuffling on, validation on) delivering
           ``Batch(dense, KeyedJaggedTensor, labels)``; the time includes the prefetch thread.
The two alternate, each ``--repeats`` times; medians and the ratio are printed.
3. training samples/s of the full-table DLRM on one local worker (one thread).
Everything is pinned to one core (OMP/arrow threads = 1). Goal: reader >= 50% of bare.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from compactrec.logs import quiet_third_party  # noqa: E402
from compactrec.trainer.config import SynthConfig, load_config  # noqa: E402
from compactrec.trainer.data.manifest import manifest_path, read_manifest  # noqa: E402
from compactrec.trainer.data.reader import ParquetReader  # noqa: E402
from compactrec.trainer.data.synthetic import generate  # noqa: E402


def bare_pass(files, columns, batch_size) -> int:
    rows = 0
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            rows += rb.num_rows
    return rows


def reader_pass(reader: ParquetReader) -> int:
    rows = 0
    for b in reader.epoch(0):
        rows += b.labels.shape[0]
    return rows


def timed(fn) -> tuple[float, int]:
    t = time.perf_counter()
    n = fn()
    return time.perf_counter() - t, n


def train_throughput(data: Path, steps: int, batch_size: int) -> float:
    from compactrec.cluster.local_launcher import run_local

    cfg = load_config(None, [
        f"data.path={data}", "trainer.launcher=local", "cluster.num_workers=1",
        f"trainer.max_steps={steps}", f"data.batch_size={batch_size}", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "runs_dir=runs/bench", "name=reader_bench_train",
    ])
    return float(run_local(cfg)["samples_per_s"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data/bench_reader")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args()
    quiet_third_party()
    torch.set_num_threads(1)
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)

    data = Path(args.data)
    if not manifest_path(data).exists():
        print(f"generating {args.rows} rows in {data} ...", flush=True)
        generate(SynthConfig(rows_train=args.rows, rows_eval=args.rows // 10, shards_train=8,
                             row_group_size=131072), data)
    m = read_manifest(data)
    files = m.split_files(data, "train")
    columns = [m.schema.label, *m.schema.dense, *m.schema.sparse_names]
    reader = ParquetReader(files, m.schema, args.batch_size, shuffle=True, validate=True)
    reader_pass(reader)  # warm the page cache and imports
    bare, ours = [], []
    for _ in range(args.repeats):
        t, n = timed(lambda: bare_pass(files, columns, args.batch_size))
        bare.append(n / t)
        t, n = timed(lambda: reader_pass(reader))
        ours.append(n / t)
    b, o = statistics.median(bare), statistics.median(ours)
    train = train_throughput(data, args.train_steps, args.batch_size) if args.train_steps > 0 else float("nan")
    result = {
        "rows": m.splits["train"].rows,
        "batch_size": args.batch_size,
        "bare_rows_per_s": b,
        "reader_rows_per_s": o,
        "reader_over_bare": o / b,
        "train_samples_per_s": train,
        "reader_over_train": o / train if train == train else None,
        "runs_bare": bare,
        "runs_reader": ours,
    }
    print(f"bare pyarrow iter_batches : {b:12,.0f} rows/s (median of {args.repeats})")
    print(f"ParquetReader -> KJT      : {o:12,.0f} rows/s (median of {args.repeats})  = {o / b:.0%} of bare")
    print(f"training (full DLRM, 1 worker, 1 thread): {train:,.0f} samples/s; reader/trainer = {o / train:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
