"""HotSketch insert and query throughput on one core.

    python benchmarks/sketch.py [--batches 40] [--repeats 5] [--ratio 16] [--dim 16]

Batches of 2048 samples x 26 features of Zipf ids over the demo cardinalities
(``synthetic_cardinalities(SynthConfig())``, about 204k distinct global ids; per-feature
exponents in [1.05, 1.3] as the synthetic data), scores ~ Exp(1) (like grad norms normalised
to mean 1). The sketch is sized as CAFE sizes it (``plan_cafe`` at ``--ratio``), unless
``--buckets`` is given. Each repeat starts a fresh sketch, fills it with ``--warmup`` batches
(untimed), then times inserts and queries over ``--batches`` batches. Each is timed in
process CPU time (``time.process_time``: steady on a shared machine, where wall time swings
with other jobs) and wall time; medians over repeats with [min, max], and the load average
at start and end, are printed. Goal: >= 5M ids/s insert. OMP / torch threads = 1.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from compactrec.embeddings.accounting import full_embedding_bytes  # noqa: E402
from compactrec.embeddings.cafe import plan_cafe  # noqa: E402
from compactrec.embeddings.hotsketch import HotSketch  # noqa: E402
from compactrec.trainer.config import CafeConfig, SynthConfig  # noqa: E402
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature  # noqa: E402
from compactrec.data.datasets.synthetic import synthetic_cardinalities  # noqa: E402


def zipf_batches(cards, batch: int, count: int, seed: int = 0):
    """``count`` tensors of (batch * features,) global ids."""
    rng = np.random.default_rng(seed)
    offsets = np.cumsum([0] + cards[:-1])
    cdfs, perms = [], []
    for n in cards:
        p = 1.0 / np.arange(1, n + 1) ** rng.uniform(1.05, 1.3)
        cdfs.append(np.cumsum(p) / p.sum())
        perms.append(rng.permutation(n))  # hot ids are not 0, 1, 2, ...
    out = []
    for _ in range(count):
        cols = [
            off + perm[np.minimum(np.searchsorted(cdf, rng.random(batch)), len(cdf) - 1)]
            for off, cdf, perm in zip(offsets, cdfs, perms)
        ]
        out.append(torch.from_numpy(np.stack(cols, 1).reshape(-1).astype(np.int64)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=2048)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--ratio", type=float, default=16.0)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--buckets", type=int, default=None, help="sketch buckets = hot slots (default: from plan_cafe)")
    ap.add_argument("--threshold", type=float, default=CafeConfig().threshold)
    args = ap.parse_args()
    torch.set_num_threads(1)

    cards = synthetic_cardinalities(SynthConfig())
    schema = FeatureSchema("label", (), tuple(SparseFeature(f"cat_{i}", c) for i, c in enumerate(cards)))
    cfg = CafeConfig(threshold=args.threshold)
    budget = int(full_embedding_bytes(schema, args.dim) / args.ratio)
    buckets = args.buckets or plan_cafe(schema, args.dim, budget, cfg, 200).buckets
    data = zipf_batches(cards, args.batch, args.warmup + args.batches)
    rng = np.random.default_rng(1)
    scores = [torch.from_numpy(rng.exponential(1.0, d.numel()).astype(np.float32)) for d in data]
    n_ids = sum(d.numel() for d in data[args.warmup :])

    ins, qry, ins_wall, qry_wall, hot = [], [], [], [], []
    distinct = len(torch.unique(torch.cat(data)))
    load_start = os.getloadavg()[0]
    for _ in range(args.repeats):
        sk = HotSketch(buckets, buckets, cfg.threshold, cfg.slots, cfg.decay, cfg.seed)
        for d, s in zip(data[: args.warmup], scores[: args.warmup]):
            sk.insert(d, s)
        t, c = time.perf_counter(), time.process_time()
        for d, s in zip(data[args.warmup :], scores[args.warmup :]):
            sk.insert(d, s)
        ins.append(n_ids / (time.process_time() - c))
        ins_wall.append(n_ids / (time.perf_counter() - t))
        t, c = time.perf_counter(), time.process_time()
        for d in data[args.warmup :]:
            sk.query(d)
        qry.append(n_ids / (time.process_time() - c))
        qry_wall.append(n_ids / (time.perf_counter() - t))
        hot.append(sk.num_hot)
    result = {
        "batch_ids": data[0].numel(),
        "distinct_keys_seen": distinct,
        "buckets": buckets,
        "hot_slots": buckets,
        "threshold": cfg.threshold,
        "insert_ids_per_cpu_s": statistics.median(ins),
        "insert_range": [min(ins), max(ins)],
        "insert_ids_per_wall_s": statistics.median(ins_wall),
        "query_ids_per_cpu_s": statistics.median(qry),
        "query_range": [min(qry), max(qry)],
        "query_ids_per_wall_s": statistics.median(qry_wall),
        "insert_cpu_ms_per_batch": 1e3 * data[0].numel() / statistics.median(ins),
        "hot_at_end": statistics.median(hot),
        "repeats": args.repeats,
        "load_average": [load_start, os.getloadavg()[0]],
    }
    m = 1e6
    print(f"HotSketch, {buckets} buckets x {cfg.slots} slots, batches of {data[0].numel()} ids, "
          f"medians of {args.repeats} repeats, load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"  ({distinct} distinct keys seen, {result['hot_at_end']} hot at the end)")
    print(f"  insert: {statistics.median(ins) / m:.2f} M ids per CPU-second [{min(ins) / m:.2f}, {max(ins) / m:.2f}] "
          f"({result['insert_cpu_ms_per_batch']:.2f} CPU ms / batch); wall {statistics.median(ins_wall) / m:.2f} M ids/s")
    print(f"  query:  {statistics.median(qry) / m:.2f} M ids per CPU-second [{min(qry) / m:.2f}, {max(qry) / m:.2f}]; "
          f"wall {statistics.median(qry_wall) / m:.2f} M ids/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
