"""Training step time of every method against the full table, same batch, same run.

    python benchmarks/speed.py [--batch-size 2048] [--rounds 7] [--steps 10] [--ratio 16]

Each method's DLRM is built and sharded exactly as in training (DistributedModelParallel on
a 1-rank gloo group, FBGEMM fused rowwise Adagrad, the demo's synthetic data and dim 32),
then the methods take turns: each round times ``--steps`` optimizer steps of every method on
the same pre-read batches (warm-up round discarded). Medians over rounds, and the ratio to
the full table's median measured in the same run. One thread (OMP_NUM_THREADS=1).
Goal (issue 3): every method within 1.3x of the full table's step time on CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from compactrec.logs import quiet_third_party  # noqa: E402

METHODS = ["full", "hash", "qr", "memcom", "mixed_dim", "cafe"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--ratio", type=float, default=16)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--json", default=None)
    p.add_argument("--mlperf-model", action="store_true",
                   help="MLPerf DLRMv2's dense part (DCNv2, dim 128, bottom 512-256-128, top 1024-1024-512-256-1)")
    args = p.parse_args()
    quiet_third_party()
    torch.set_num_threads(1)

    from compactrec.cluster.run import ensure_data
    from compactrec.sharding.env import DistEnv, free_port, init_process_group
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    base = load_config(None, [f"data.path={args.data}", "data.synthesize_if_missing=true"])
    ensure_data(base)
    init_process_group(0, 1, free_port())
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    manifest = read_manifest(args.data)
    need = (args.rounds + 1) * args.steps
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True)
    batches = []
    for b in reader.epoch(0):
        batches.append(b)
        if len(batches) == need:
            break
    runs = {}
    for kind in args.methods:
        over = [f"data.path={args.data}", f"embedding.kind={kind}"] + ([] if kind == "full" else [f"compression.ratio={args.ratio}"])
        if args.mlperf_model:
            over += ["model.arch=dcn", "model.embedding_dim=128", "model.dense_arch=[512,256,128]",
                     "model.over_arch=[1024,1024,512,256,1]", "model.dcn_num_layers=3", "model.dcn_low_rank_dim=512"]
        cfg = load_config(None, over)
        model = shard_model(build_train_model(cfg, manifest), cfg.sharding.types, {}, env)
        runs[kind] = (model, build_optimizer(model, cfg.optim))

    def steps(kind: str, chunk) -> float:
        model, opt = runs[kind]
        t = time.perf_counter()
        for b in chunk:
            loss, _ = model(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return (time.perf_counter() - t) / len(chunk) * 1000

    times = {k: [] for k in args.methods}
    for r in range(args.rounds + 1):
        chunk = batches[r * args.steps : (r + 1) * args.steps]
        order = list(args.methods)
        random.Random(r).shuffle(order)  # a new order every round spreads drift over methods
        for kind in order:
            ms = steps(kind, chunk)
            if r > 0:  # round 0 warms up every model
                times[kind].append(ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    # The machine is shared: step times drift by +-30% between rounds. Each round's ratio to
    # the full table (measured minutes apart at most) is steadier; report its median.
    ratios = {k: statistics.median(a / b for a, b in zip(times[k], times["full"])) for k in times} if "full" in times else {}
    model = "MLPerf DLRMv2 dense part, dim 128" if args.mlperf_model else "demo DLRM, dim 32"
    print(f"{model}, batch {args.batch_size}, ratio {args.ratio:g}x, medians of {args.rounds} rounds x {args.steps} steps")
    print("| method | ms / step | vs full (median of per-round ratios) | samples/s |")
    print("|---|---|---|---|")
    for k in args.methods:
        ratio = f"{ratios[k]:.2f}x" if ratios else "-"
        print(f"| {k} | {med[k]:.1f} | {ratio} | {args.batch_size / med[k] * 1000:,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "ms": times, "median_ms": med, "ratio": ratios}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
