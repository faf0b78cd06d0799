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
        cfg = load_config(None, over + list(args.set))
        model = shard_model(_build(build_train_model, cfg, manifest, env), cfg.sharding.types, {}, env)
        runs[kind] = (model, build_optimizer(model, cfg.optim))

    def steps(kind: str, chunk) -> float:
        """Process CPU ms per step (all threads; steadier than wall time on a shared box)."""
        model, opt = runs[kind]
        t, c = time.perf_counter(), time.process_time()
        for b in chunk:
            loss, _ = model(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
        wall[kind].append((time.perf_counter() - t) / len(chunk) * 1000)
        return (time.process_time() - c) / len(chunk) * 1000

    times = {k: [] for k in args.methods}
    wall = {k: [] for k in args.methods}
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
    spread = ({k: (min(a / b for a, b in zip(times[k], times["full"])), max(a / b for a, b in zip(times[k], times["full"])))
               for k in times} if "full" in times else {})
    print(f"{model}, batch {args.batch_size}, ratio {args.ratio:g}x, medians of {args.rounds} rounds x {args.steps} steps, "
          f"process CPU time, load average {os.getloadavg()[0]:.1f}")
    print("| method | CPU ms / step | wall ms / step | vs full (median [min, max] of per-round CPU ratios) |")
    print("|---|---|---|---|")
    for k in args.methods:
        ratio = f"{ratios[k]:.2f}x [{spread[k][0]:.2f}, {spread[k][1]:.2f}]" if ratios else "-"
        print(f"| {k} | {med[k]:.1f} | {statistics.median(wall[k][1:] or wall[k]):.1f} | {ratio} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu_ms": times, "wall_ms": wall, "median_cpu_ms": med,
                                               "ratio": ratios, "ratio_range": spread}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
