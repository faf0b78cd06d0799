"""Reader throughput vs a bare pyarrow pass, and training samples/s, measured in one run.

    python benchmarks/reader.py [--rows 1000000] [--repeats 5] [--train-steps 300]

1. bare:   ``pq.ParquetFile(f).iter_batches(batch_size=B, columns=...)`` over the train shards
           (decode only: what pyarrow alone costs), both row group by row group (as a rank
           reads them; the faster of the two) and over whole files.
2. reader: ``ParquetReader`` (one rank, shuffling on, validation on) delivering
           ``Batch(dense, KeyedJaggedTensor, labels)``; the time includes the prefetch thread.
The two alternate, each ``--repeats`` times; medians and the ratio are printed.
3. training samples/s of the full-table DLRM on one local worker (one thread).
Everything is pinned to one core (OMP/arrow threads = 1). Goal: reader >= 50% of bare.
"""

from __future__ import annotations

import argparse
import importlib.util
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
from compactrec.data.reader.manifest import manifest_path, read_manifest  # noqa: E402
from compactrec.data.reader.parquet import ParquetReader  # noqa: E402
from compactrec.data.datasets.synthetic import generate  # noqa: E402


def whole_file_pass(files, columns, batch_size) -> int:
    """``ParquetFile(f).iter_batches`` over each whole file (the issue's literal baseline)."""
    rows = 0
    for f in files:
        for rb in pq.ParquetFile(f).iter_batches(batch_size=batch_size, columns=columns, use_threads=False):
            rows += rb.num_rows
    return rows


def _data_bench():
    """benchmarks/data.py: its per-rank bare and reader passes are the ones timed here too."""
    spec = importlib.util.spec_from_file_location("bench_data", Path(__file__).with_name("data.py"))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


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
    p.add_argument("--data", default="datasets/bench_reader")
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
    bench = _data_bench()
    reader = ParquetReader(m.split_files(data, "train"), m.schema, args.batch_size, shuffle=True, validate=True)
    bench.reader_pass(reader, 0)  # warm the page cache and imports
    files = m.split_files(data, "train")
    bare, whole, ours = [], [], []
    for i in range(args.repeats):  # alternating, so drift hits all three alike
        bare.append(bench._timed(lambda: bench.bare_pass(reader, i, args.batch_size)))
        whole.append(bench._timed(lambda: whole_file_pass(files, reader.columns, args.batch_size)))
        ours.append(bench._timed(lambda: bench.reader_pass(reader, i)))
    b, w, o = statistics.median(bare), statistics.median(whole), statistics.median(ours)
    paired = statistics.median(y / x for x, y in zip(bare, ours))  # each repeat's own ratio
    paired_whole = statistics.median(y / x for x, y in zip(whole, ours))
    train = train_throughput(data, args.train_steps, args.batch_size) if args.train_steps > 0 else float("nan")
    result = {
        "rows": m.splits["train"].rows, "batch_size": args.batch_size,
        "bare_rows_per_s": b, "whole_file_rows_per_s": w, "reader_rows_per_s": o,
        "reader_over_bare": paired, "reader_over_whole_file": paired_whole,
        "train_samples_per_s": train, "reader_over_train": o / train if train == train else None,
        "runs_bare": bare, "runs_whole_file": whole, "runs_reader": ours,
    }
    n = args.repeats
    print(f"bare iter_batches, row group by row group : {b:12,.0f} rows/s (median of {n})")
    print(f"bare iter_batches, whole files            : {w:12,.0f} rows/s (median of {n})")
    print(f"ParquetReader -> KJT (shuffled, validated): {o:12,.0f} rows/s (median of {n})")
    print(f"reader / bare (median of paired repeats): {paired:.0%} of the row-group pass, {paired_whole:.0%} of the whole-file pass")
    print(f"training (full DLRM, 1 worker, 1 thread): {train:,.0f} samples/s; reader/trainer = {o / train:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
