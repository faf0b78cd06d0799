"""Reader throughput vs a bare pyarrow pass, and the trainer's consumption, in one run.

    OMP_NUM_THREADS=1 python benchmarks/reader.py [--rows 1000000] [--repeats 5] [--train-steps 20]

1. bare:   ``pq.ParquetFile(f).iter_batches(batch_size=B, columns=...)`` over the train shards
           (decode only: what pyarrow alone costs), both row group by row group (as a rank
           reads them) and over whole files.
2. reader: ``ParquetReader`` (one rank, shuffling on, validation on) delivering
           ``Batch(dense, KeyedJaggedTensor, labels)``, its background thread included.
The three alternate, each ``--repeats`` times. Each pass is timed in process CPU time (every
thread of the process: the reader's prefetch thread is counted) and wall time; the ratio
reader / bare is the median of the paired repeats' CPU-time ratios, with [min, max].
3. where a reader core's time goes: the reader's own steps (``read_row_group``, ``convert``,
   the permutation, ``RowBlock.arrange``, the batches) timed one by one on this thread.
4. the trainer's consumption: samples per CPU-second of the full-table DLRM's training step
   (one gloo rank, one thread, built as ``compactrec train`` builds it), printed next to
   the reader's rows per CPU-second: both are per core.
Everything runs on one thread (OMP / arrow threads = 1), with malloc keeping freed memory as
in a training worker (``--default-malloc``: glibc's defaults; both passes share the process).
Goal: reader >= 70% of bare.
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

import numpy as np  # noqa: E402
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


def train_consumption(data: Path, steps: int, batch_size: int) -> float:
    """Samples per CPU-second of the full-table DLRM's training step (the loop's step), on
    pre-read batches: what one training process consumes per core."""
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.env import DistEnv, free_port, init_process_group
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.dense_engine import build_dense_engine
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.pipeline import train_step

    cfg = load_config(None, [f"data.path={data}", "embedding.kind=full", f"data.batch_size={batch_size}"])
    init_process_group(0, 1, free_port())
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    m = read_manifest(data)
    with tables_on("meta"):
        model = shard_model(build_train_model(cfg, m, env.device), cfg.sharding.types, {}, env)
    engine = build_dense_engine(cfg.dense, cfg.optim, model, env)
    reader = ParquetReader(m.split_files(data, "train"), m.schema, batch_size, shuffle=True, max_steps=steps + 3)
    batches = list(reader.epoch(0))
    for b in batches[:3]:  # warm-up
        train_step(engine, b, env.device)
    c = time.process_time()
    for b in batches[3:]:
        train_step(engine, b, env.device)
    return len(batches[3:]) * batch_size / (time.process_time() - c)


def train_throughput(data: Path, steps: int, batch_size: int) -> float:
    """Samples/s of a real local training run (``benchmarks/data.py`` uses it)."""
    from compactrec.cluster.local_launcher import run_local

    cfg = load_config(None, [
        f"data.path={data}", "trainer.launcher=local", "cluster.num_workers=1",
        f"trainer.max_steps={steps}", f"data.batch_size={batch_size}", "trainer.progress_bar=false",
        "trainer.tensorboard=false", "runs_dir=runs/bench", "name=reader_bench_train",
    ])
    return float(run_local(cfg)["samples_per_s"])


def breakdown(reader: ParquetReader, epochs: range) -> dict:
    """Milliseconds of CPU time per 1M rows in each of the reader's steps, on one thread
    without the prefetch thread (the steps ``ParquetReader._batches`` runs, one row group
    at a time; batches do not span row groups here)."""
    from compactrec.data.reader.columns import Buffers, convert

    ms = dict.fromkeys(["read_row_group", "convert (validate, narrow, log1p)", "permutation",
                        "arrange (sort, np.take)", "batches (int64 values, KJT)"], 0.0)
    names, rows, b = list(ms), 0, reader.batch_size
    for epoch in epochs:
        files, buffers = {}, Buffers()
        for ref in reader.assignment(epoch)[reader.rank]:
            pf = files.get(ref.file) or files.setdefault(ref.file, reader._open(ref.file))
            c = [time.process_time()]
            table = pf.read_row_group(ref.index, columns=reader.columns)
            c.append(time.process_time())
            block = convert(table, reader.schema, ref.file, reader.dense_transform, reader.validate, reader.non_finite, buffers)
            c.append(time.process_time())
            block.order = np.random.default_rng([reader.seed, epoch, ref.gid]).permutation(block.rows)
            c.append(time.process_time())
            part = block.arrange(0, block.rows, b, b, buffers)
            c.append(time.process_time())
            for a in range(0, part.rows - b + 1, b):
                reader._to_batch([(part, a, a + b)])
            c.append(time.process_time())
            for k, name in enumerate(names):
                ms[name] += (c[k + 1] - c[k]) * 1e3
            rows += block.rows
    return {k: v * 1e6 / rows for k, v in ms.items()}


def _timed(fn):
    """(rows per CPU-second, rows per wall-second) of one pass."""
    t, c = time.perf_counter(), time.process_time()
    n = fn()
    return n / (time.process_time() - c), n / (time.perf_counter() - t)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/bench_reader")
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-steps", type=int, default=20)
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--default-malloc", action="store_true",
                   help="glibc's default malloc (the training workers keep freed memory: trainer/host_malloc.py)")
    args = p.parse_args()
    quiet_third_party()
    if not args.default_malloc:
        from compactrec.trainer.host_malloc import keep_freed_memory

        keep_freed_memory()  # as in a training worker (cluster.keep_freed_memory); both passes share it
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
    load_start = os.getloadavg()[0]
    passes = {
        "bare iter_batches, row group by row group": lambda i: bench.bare_pass(reader, i, args.batch_size),
        "bare iter_batches, whole files": lambda i: whole_file_pass(files, reader.columns, args.batch_size),
        "ParquetReader -> Batch(KJT), shuffled, validated": lambda i: bench.reader_pass(reader, i),
    }
    cpu = {k: [] for k in passes}
    wall = {k: [] for k in passes}
    for i in range(args.repeats):  # alternating, so drift hits all three alike
        for k, fn in passes.items():
            c, w = _timed(lambda: fn(i))
            cpu[k].append(c)
            wall[k].append(w)
    names = list(passes)
    ours = cpu[names[2]]
    vs_bare = [o / b for o, b in zip(ours, cpu[names[0]])]  # each repeat's own ratio
    vs_whole = [o / b for o, b in zip(ours, cpu[names[1]])]
    steps = breakdown(reader, range(args.repeats))
    train = train_consumption(data, args.train_steps, args.batch_size) if args.train_steps > 0 else float("nan")
    load_end = os.getloadavg()[0]
    med = statistics.median
    result = {
        "rows": m.splits["train"].rows, "batch_size": args.batch_size, "repeats": args.repeats,
        "rows_per_cpu_s": {k: med(v) for k, v in cpu.items()}, "rows_per_wall_s": {k: med(v) for k, v in wall.items()},
        "reader_over_bare": med(vs_bare), "reader_over_bare_range": [min(vs_bare), max(vs_bare)],
        "reader_over_whole_file": med(vs_whole), "train_samples_per_cpu_s": train,
        "reader_over_train": med(ours) / train if train == train else None,
        "reader_steps_ms_per_1m_rows": steps, "runs_cpu": cpu, "runs_wall": wall, "load_average": [load_start, load_end],
    }
    print(f"{result['rows']:,} rows, batch {args.batch_size}, one thread, medians of {args.repeats} alternating repeats, "
          f"load average {load_start:.1f} -> {load_end:.1f}")
    print("| pass | rows per CPU-second | rows per wall-second |")
    print("|---|---|---|")
    for k in names:
        print(f"| {k} | {med(cpu[k]):,.0f} | {med(wall[k]):,.0f} |")
    print(f"reader / bare (CPU time, median [min, max] of paired repeats): {med(vs_bare):.0%} "
          f"[{min(vs_bare):.0%}, {max(vs_bare):.0%}] of the row-group pass, {med(vs_whole):.0%} of the whole-file pass")
    print("where a reader core's time goes (CPU ms per 1M rows, one thread, no prefetch thread): "
          + ", ".join(f"{k} {v:.0f}" for k, v in steps.items()) + f"; sum {sum(steps.values()):.0f}")
    print(f"per core: reader {med(ours):,.0f} rows per CPU-second; trainer (full DLRM step, batch {args.batch_size}) "
          f"consumes {train:,.0f} samples per CPU-second; reader / trainer = {med(ours) / train:.1f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
