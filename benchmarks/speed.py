"""Training step time of every method against the full table, same batch, same run.

    OMP_NUM_THREADS=1 python benchmarks/speed.py [--batch-size 2048] [--rounds 7] [--steps 10] [--ratio 16]
        [--world-size 1] [--set KEY=VALUE ...] [--methods full full+fp16 hash ...]

A method ``kind+fp16`` (or ``+bf16``) is that method with ``embedding.precision`` set, at the
same bytes, timed in the same rounds as the others; ``kind:KEY=VALUE[,KEY=VALUE]`` is that method
with config overrides (``cafe:embedding.cafe.update_every=8``).
Each method's DLRM is built and sharded exactly as in training (DistributedModelParallel on
a gloo group of ``--world-size`` local ranks, FBGEMM fused rowwise Adagrad, the demo's
synthetic data and dim 32), then the methods take turns: each round times ``--steps``
optimizer steps of every method on the same pre-read batches (order shuffled per round,
warm-up round discarded). Step time is process CPU time (steady on a shared machine; wall
time is printed too); with several ranks, the mean over ranks of each rank's own CPU time.
"vs full" is the median, with [min, max], of the per-round ratios to the full table
measured in the same round; the load average is printed at start and end.
Goal (issue 16): within 1.3x of the full table at batch 2048 and 1.5x at batch 128.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import List

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from compactrec.logs import quiet_third_party  # noqa: E402

METHODS = ["full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe"]


def method_overrides(kind: str, data: str, ratio: float = 16) -> List[str]:
    """One method's config overrides as the speed benchmarks build it: the demo data at
    ``ratio``x (the full table at 1x)."""
    return [f"data.path={data}", f"embedding.kind={kind}"] + ([] if kind == "full" else [f"compression.ratio={ratio}"])


def take_batches(reader, n: int) -> list:
    """The reader's first ``n`` batches, over as many epochs as that takes (the demo has ~100
    of 2048 per epoch)."""
    batches = []
    while len(batches) < n:
        for b in reader.epoch(len(batches)):
            batches.append(b)
            if len(batches) == n:
                break
    return batches


def _build(build_train_model, cfg, manifest, env):
    """As the training loop builds: tables on meta when the code has ``tables_on`` (run
    against an older checkout, the whole model on the host, as it was then)."""
    try:
        from compactrec.embeddings.base import tables_on
    except ImportError:
        return build_train_model(cfg, manifest)
    with tables_on("meta"):
        return build_train_model(cfg, manifest, env.device)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--ratio", type=float, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--json", default=None)
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every method (e.g. sharding.types=[table_wise])")
    p.add_argument("--mlperf-model", action="store_true",
                   help="MLPerf DLRMv2's dense part (DCNv2, dim 128, bottom 512-256-128, top 1024-1024-512-256-1)")
    p.add_argument("--world-size", type=int, default=1, help="gloo ranks (local processes)")
    args = p.parse_args()
    from compactrec.sharding.env import run_ranks

    run_ranks(_run, args.world_size, vars(args))
    return 0


def _run(rank: int, world: int, opts: dict) -> None:
    """One rank: build every method, time the alternating rounds, rank 0 prints."""
    args = argparse.Namespace(**opts)
    quiet_third_party()
    torch.set_num_threads(1)
    from compactrec.trainer.host_malloc import keep_freed_memory

    keep_freed_memory()  # as every training worker does (cluster.keep_freed_memory)
    load_start = os.getloadavg()[0]

    from compactrec.cluster.run import ensure_data
    from compactrec.sharding.env import DistEnv, all_gather_object
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    base = load_config(None, [f"data.path={args.data}", "data.synthesize_if_missing=true"])
    if rank == 0:
        ensure_data(base)
    all_gather_object(None)  # the others wait for the data
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    manifest = read_manifest(args.data)
    need = (args.rounds + 1) * args.steps
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True,
                           rank=rank, world_size=world)
    batches = take_batches(reader, need)
    runs = {}
    for name in args.methods:
        method, _, knobs = name.partition(":")  # "cafe:embedding.cafe.update_every=8": with overrides
        kind, _, precision = method.partition("+")  # "hash+fp16": hash with fp16 tables, same bytes
        over = method_overrides(kind, args.data, args.ratio) + [k for k in knobs.split(",") if k]
        over += [f"embedding.precision={precision}"] if precision else []
        if args.mlperf_model:
            over += ["model.arch=dcn", "model.embedding_dim=128", "model.dense_arch=[512,256,128]",
                     "model.over_arch=[1024,1024,512,256,1]", "model.dcn_num_layers=3", "model.dcn_low_rank_dim=512"]
        cfg = load_config(None, over + list(args.set))
        model = shard_model(_build(build_train_model, cfg, manifest, env), cfg.sharding.types, {}, env)
        runs[name] = (model, build_optimizer(model, cfg.optim))

    def steps(kind: str, chunk) -> tuple:
        """(process CPU ms, wall ms) per step (CPU: all threads; steadier on a shared box)."""
        model, opt = runs[kind]
        t, c = time.perf_counter(), time.process_time()
        for b in chunk:
            loss, _ = model(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.process_time() - c) / len(chunk) * 1000, (time.perf_counter() - t) / len(chunk) * 1000

    # Each method gets its own copy of the batches: a KJT caches what TorchRec computes from
    # it (offsets, per-key lengths), and a shared one would hand that to the next method.
    data = {k: copy.deepcopy(batches) for k in args.methods}
    times = {k: [] for k in args.methods}
    wall = {k: [] for k in args.methods}
    for r in range(args.rounds + 1):
        order = list(args.methods)
        random.Random(r).shuffle(order)  # a new order every round spreads drift over methods
        for kind in order:
            cpu_ms, wall_ms = steps(kind, data[kind][r * args.steps : (r + 1) * args.steps])
            if r > 0:  # round 0 warms up every model
                times[kind].append(cpu_ms)
                wall[kind].append(wall_ms)
    # every rank's own CPU time per step, averaged over ranks (rank 0 reports)
    parts = all_gather_object((times, wall))
    times = {k: [statistics.mean(p[0][k][i] for p in parts) for i in range(len(times[k]))] for k in times}
    wall = {k: [statistics.mean(p[1][k][i] for p in parts) for i in range(len(wall[k]))] for k in wall}
    if rank != 0:
        return
    med = {k: statistics.median(v) for k, v in times.items()}
    # The machine is shared: step times drift by +-30% between rounds. Each round's ratio to
    # the full table (measured minutes apart at most) is steadier; report its median.
    per_round = {k: [a / b for a, b in zip(times[k], times["full"])] for k in times} if "full" in times else {}
    ratios = {k: statistics.median(v) for k, v in per_round.items()}
    spread = {k: (min(v), max(v)) for k, v in per_round.items()}
    model = "MLPerf DLRMv2 dense part, dim 128" if args.mlperf_model else "demo DLRM, dim 32"
    print(f"{model}, batch {args.batch_size} per rank, {world} rank(s), ratio {args.ratio:g}x, medians of {args.rounds} "
          f"rounds x {args.steps} steps, process CPU time, load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| method | CPU ms / step | wall ms / step | vs full (median [min, max] of per-round CPU ratios) |")
    print("|---|---|---|---|")
    for k in args.methods:
        ratio = f"{ratios[k]:.2f}x [{spread[k][0]:.2f}, {spread[k][1]:.2f}]" if ratios else "-"
        print(f"| {k} | {med[k]:.1f} | {statistics.median(wall[k]):.1f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "world_size": world, "cpu_ms": times, "wall_ms": wall,
                                               "median_cpu_ms": med, "ratio": ratios, "ratio_range": spread}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
