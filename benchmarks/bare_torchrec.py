"""`compactrec train`'s full-table step against a bare TorchRec loop, same run, same batches.

    OMP_NUM_THREADS=1 python benchmarks/bare_torchrec.py [--batch-size 2048] [--rounds 5] [--steps 10] [--pipeline]

The bare loop is what a TorchRec user writes for the demo model: the same tables (one
``EmbeddingBagConfig`` per feature, dim 32), TorchRec's ``DLRMTrain`` with the same dense and
over arch, FBGEMM's fused rowwise Adagrad applied in backward, torch Adagrad for the dense
part, ``DistributedModelParallel`` on one gloo rank with a table_wise fused plan (the stock
CPU planner would offer data_parallel, whose dense kernel never updates a table on CPU),
and ``loss, _ = model(batch); opt.zero_grad(); loss.backward(); opt.step()``.
The CompactRec side is built as ``compactrec train`` builds it (``build_train_model``,
``shard_model``, ``build_dense_engine``) and runs the loop's own step
(``trainer.pipeline.train_step``) plus the loop's per-step bookkeeping (the loss summed on
the device). ``--pipeline`` adds a third contender: the bare model driven by TorchRec's
``TrainPipelineSparseDist``. Both models start from the same seed and read the same
pre-built ``Batch(dense, KJT, labels)`` list from the demo Parquet.

Rounds alternate the contenders (order shuffled per round, round 0 discarded as warm-up);
each round times ``--steps`` steps in process CPU time (steady on a shared machine) and wall
time. Printed: medians, [min, max] of the per-round ratios, the load average at start and
end. "speed vs bare" > 1 means faster than the bare loop.
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
from typing import Callable, Dict, List

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from compactrec.logs import quiet_third_party  # noqa: E402


def bare_model(cfg, manifest, device: torch.device):
    """The bare TorchRec DLRM of the demo, sharded by DMP; returns (model, optimizer)."""
    import torch.distributed as dist
    from torch.distributed.optim import _apply_optimizer_in_backward
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
    from torchrec.distributed.planner.types import ParameterConstraints
    from torchrec.models.dlrm import DLRM, DLRMTrain
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection
    from torchrec.optim import RowWiseAdagrad
    from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    torch.manual_seed(cfg.trainer.seed)
    tables = [EmbeddingBagConfig(name=f"t_{f.name}", embedding_dim=cfg.model.embedding_dim,
                                 num_embeddings=f.cardinality, feature_names=[f.name]) for f in manifest.schema.sparse]
    ebc = EmbeddingBagCollection(tables=tables, device=torch.device("meta"))
    model = DLRMTrain(DLRM(embedding_bag_collection=ebc, dense_in_features=len(manifest.schema.dense),
                           dense_arch_layer_sizes=list(cfg.model.dense_arch),
                           over_arch_layer_sizes=list(cfg.model.over_arch), dense_device=device))
    _apply_optimizer_in_backward(RowWiseAdagrad, ebc.parameters(), {"lr": cfg.optim.sparse_lr, "eps": cfg.optim.eps})
    constraints = {t.name: ParameterConstraints(sharding_types=["table_wise"], compute_kernels=["fused"]) for t in tables}
    topology = Topology(world_size=1, compute_device=device.type)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adagrad(ps, lr=cfg.optim.dense_lr, eps=cfg.optim.eps))
    return dmp, CombinedOptimizer([dense, dmp.fused_optimizer])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pipeline", action="store_true", help="also time the bare model under TrainPipelineSparseDist")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    quiet_third_party()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]

    from compactrec.cluster.run import ensure_data
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.env import DistEnv, free_port, init_process_group
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.dense_engine import build_dense_engine
    from compactrec.trainer.loop import LossWindow, build_train_model
    from compactrec.trainer.pipeline import sparse_dist_pipeline, train_step

    cfg = load_config(None, [f"data.path={args.data}", "data.synthesize_if_missing=true", "embedding.kind=full",
                             f"data.batch_size={args.batch_size}"])
    ensure_data(cfg)
    init_process_group(0, 1, free_port())
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    manifest = read_manifest(args.data)
    need = (args.rounds + 1) * args.steps
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True)
    batches = []
    while len(batches) < need:  # epochs until enough batches (the demo has ~100 of 2048)
        for b in reader.epoch(len(batches)):
            batches.append(b)
            if len(batches) == need:
                break

    with tables_on("meta"):
        ours = shard_model(build_train_model(cfg, manifest, env.device), cfg.sharding.types, cfg.sharding.per_table, env)
    engine = build_dense_engine(cfg.dense, cfg.optim, ours, env)
    window = LossWindow(env.device)
    bare, bare_opt = bare_model(cfg, manifest, env.device)
    piped, piped_opt = bare_model(cfg, manifest, env.device) if args.pipeline else (None, None)
    pipe = sparse_dist_pipeline(piped, piped_opt, env.device) if args.pipeline else None

    def run_ours(chunk) -> None:
        for b in chunk:
            window.add(train_step(engine, b, env.device))  # the loop's step and its bookkeeping

    def run_bare(chunk) -> None:
        for b in chunk:
            loss, _ = bare(b)
            bare_opt.zero_grad()
            loss.backward()
            bare_opt.step()

    def run_pipe(chunk) -> None:
        it = iter(chunk)
        try:
            while True:
                pipe.progress(it)
        except StopIteration:
            pass

    runs: Dict[str, Callable] = {"compactrec": run_ours, "bare torchrec": run_bare}
    if pipe is not None:
        runs["bare + TrainPipelineSparseDist"] = run_pipe
    # Each contender gets its own copy of the batches: a KJT caches what TorchRec computes
    # from it (length_per_key, offsets), and a shared batch would hand those to whoever
    # comes second in a round.
    data = {k: copy.deepcopy(batches) for k in runs}
    cpu: Dict[str, List[float]] = {k: [] for k in runs}
    wall: Dict[str, List[float]] = {k: [] for k in runs}
    for r in range(args.rounds + 1):
        order = list(runs)
        random.Random(r).shuffle(order)
        for name in order:
            chunk = data[name][r * args.steps : (r + 1) * args.steps]
            t, c = time.perf_counter(), time.process_time()
            runs[name](chunk)
            if r > 0:  # round 0 warms every contender up
                cpu[name].append((time.process_time() - c) / len(chunk) * 1e3)
                wall[name].append((time.perf_counter() - t) / len(chunk) * 1e3)
    load_end = os.getloadavg()[0]
    ratio = {k: [b / o for b, o in zip(cpu["bare torchrec"], cpu[k])] for k in runs}
    print(f"demo DLRM (full tables, dim {cfg.model.embedding_dim}), batch {args.batch_size}, one gloo rank, "
          f"{args.rounds} rounds x {args.steps} steps, load average {load_start:.1f} -> {load_end:.1f}")
    print("| loop | CPU ms / step | wall ms / step | speed vs bare (median [min, max] of per-round CPU ratios) |")
    print("|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {statistics.median(cpu[k]):.1f} | {statistics.median(wall[k]):.1f} | "
              f"{statistics.median(ratio[k]):.2f}x [{min(ratio[k]):.2f}, {max(ratio[k]):.2f}] |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu_ms": cpu, "wall_ms": wall, "speed_vs_bare": ratio,
                                               "load_average": [load_start, load_end]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
