"""`compactrec train`'s full-table step against a bare TorchRec loop, same run, same batches.

    OMP_NUM_THREADS=1 python benchmarks/bare_torchrec.py [--batch-size 2048] [--rounds 5] [--steps 10] [--pipeline]
        [--torchrec-arches] [--world-size 1]

The bare loop is what a TorchRec user writes for the demo model: the same tables (one
``EmbeddingBagConfig`` per feature, dim 32), TorchRec's ``DLRMTrain`` with the same dense and
over arch, FBGEMM's fused rowwise Adagrad applied in backward, torch Adagrad for the dense
part, ``DistributedModelParallel`` on ``--world-size`` gloo ranks (local processes) with a
table_wise fused plan from TorchRec's planner (the stock CPU planner would offer
data_parallel, whose dense kernel never updates a table on CPU), and
``loss, _ = model(batch); opt.zero_grad(); loss.backward(); opt.step()``.
The CompactRec side is built as ``compactrec train`` builds it (``build_train_model``,
``shard_model``, ``build_dense_engine``) and runs the loop's own step
(``trainer.pipeline.train_step``) plus the loop's per-step bookkeeping (the loss summed on
the device). ``--pipeline`` adds a contender: the bare model driven by TorchRec's
``TrainPipelineSparseDist``; ``--torchrec-arches`` another: CompactRec's loop with TorchRec's
``SparseArch`` and ``InteractionArch`` put back in place of ``KeyedSparseArch`` and
``DotInteraction`` (``trainer/sparse_arch.py``, ``trainer/interaction.py``), which separates
the loop's cost from those two modules' gain. Both models start from the same seed and read the same
pre-built ``Batch(dense, KJT, labels)`` list from the demo Parquet (each rank its own
share, ``ParquetReader(rank=r, world_size=N)``).

Rounds alternate the contenders (order shuffled per round, round 0 discarded as warm-up);
each round times ``--steps`` steps in process CPU time (steady on a shared machine) and wall
time; with several ranks, each rank's own times averaged over the ranks per round (every rank
runs the same contender at the same time: the collectives pair them). Every contender shares
one process, so all run with glibc's default malloc: ``compactrec train`` also sets
``keep_freed_memory`` in its workers, a gain this comparison leaves out
(``benchmarks/host_malloc.py`` measures it). Printed: medians,
[min, max] of the per-round ratios, the load average at start and end, and each side's
sharding plan. "speed vs bare" > 1 means faster than the bare loop.
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


def bare_model(cfg, manifest, device: torch.device, world_size: int = 1):
    """The bare TorchRec DLRM of the demo, sharded by DMP over ``world_size`` ranks (the
    default process group); returns (model, optimizer)."""
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
    topology = Topology(world_size=world_size, compute_device=device.type)
    sharders = [EmbeddingBagCollectionSharder()]
    plan = EmbeddingShardingPlanner(topology=topology, constraints=constraints).collective_plan(
        model, sharders, dist.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=sharders)
    dense = KeyedOptimizerWrapper(dict(in_backward_optimizer_filter(dmp.named_parameters())),
                                  lambda ps: torch.optim.Adagrad(ps, lr=cfg.optim.dense_lr, eps=cfg.optim.eps))
    return dmp, CombinedOptimizer([dense, dmp.fused_optimizer])


def plan_summary(model) -> str:
    """``sharding type x tables`` of a DMP's plan, e.g. ``table_wise x 26`` (a side's layout)."""
    counts: Dict[str, int] = {}
    for module_plan in model.plan.plan.values():
        for spec in module_plan.values():
            counts[spec.sharding_type] = counts.get(spec.sharding_type, 0) + 1
    return ", ".join(f"{k} x {v}" for k, v in sorted(counts.items()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--pipeline", action="store_true", help="also time the bare model under TrainPipelineSparseDist")
    p.add_argument("--torchrec-arches", "--torchrec-interaction", dest="torchrec_arches", action="store_true",
                   help="also time CompactRec's loop with TorchRec's own SparseArch and InteractionArch (the loop alone)")
    p.add_argument("--world-size", type=int, default=1, help="gloo ranks (local processes)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    quiet_third_party()
    from compactrec.cluster.run import ensure_data
    from compactrec.trainer.config import load_config

    ensure_data(load_config(None, [f"data.path={args.data}", "data.synthesize_if_missing=true"]))
    from compactrec.sharding.env import run_ranks

    run_ranks(_run, args.world_size, vars(args))
    return 0


def _run(rank: int, world: int, opts: dict) -> None:
    """One rank: build both sides (and the pipelined bare model), time the rounds; rank 0 prints."""
    args = argparse.Namespace(**opts)
    quiet_third_party()
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]

    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.env import DistEnv, all_gather_object
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.dense_engine import build_dense_engine
    from compactrec.trainer.loop import LossWindow, build_train_model
    from compactrec.trainer.pipeline import sparse_dist_pipeline, train_step
    from speed import take_batches  # benchmarks/speed.py

    cfg = load_config(None, [f"data.path={args.data}", "embedding.kind=full", f"data.batch_size={args.batch_size}"])
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    manifest = read_manifest(args.data)
    need = (args.rounds + 1) * args.steps
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True,
                           rank=rank, world_size=world)
    batches = take_batches(reader, need)

    def build_ours(torchrec_arches: bool = False):
        with tables_on("meta"):
            model = build_train_model(cfg, manifest, env.device)
            if torchrec_arches:  # TorchRec's arches back in place of KeyedSparseArch, DotInteraction
                from torchrec.models.dlrm import InteractionArch, SparseArch

                for mod in model.modules():
                    if hasattr(mod, "inter_arch"):
                        mod.inter_arch = InteractionArch(mod.inter_arch.F)
                        mod.sparse_arch = SparseArch(mod.sparse_arch.embedding_bag_collection)
            model = shard_model(model, cfg.sharding.types, cfg.sharding.per_table, env)
        return model, build_dense_engine(cfg.dense, cfg.optim, model, env), LossWindow(env.device)

    ours = build_ours()
    alt = build_ours(torchrec_arches=True) if args.torchrec_arches else None
    bare, bare_opt = bare_model(cfg, manifest, env.device, world)
    piped, piped_opt = bare_model(cfg, manifest, env.device, world) if args.pipeline else (None, None)
    pipe = sparse_dist_pipeline(piped, piped_opt, env.device) if args.pipeline else None

    def loop(side) -> Callable:
        """CompactRec's loop over one built (model, engine, loss window)."""
        _, engine, window = side

        def run(chunk) -> None:
            for b in chunk:
                window.add(train_step(engine, b, env.device))  # the loop's step and its bookkeeping
        return run

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

    runs: Dict[str, Callable] = {"compactrec": loop(ours), "bare torchrec": run_bare}
    if alt is not None:
        runs["compactrec, TorchRec's arches"] = loop(alt)
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
        random.Random(r).shuffle(order)  # the same order on every rank
        for name in order:
            chunk = data[name][r * args.steps : (r + 1) * args.steps]
            t, c = time.perf_counter(), time.process_time()
            runs[name](chunk)
            if r > 0:  # round 0 warms every contender up
                cpu[name].append((time.process_time() - c) / len(chunk) * 1e3)
                wall[name].append((time.perf_counter() - t) / len(chunk) * 1e3)
    parts = all_gather_object((cpu, wall))  # every rank's own times, averaged per round
    cpu = {k: [statistics.mean(p[0][k][i] for p in parts) for i in range(len(cpu[k]))] for k in cpu}
    wall = {k: [statistics.mean(p[1][k][i] for p in parts) for i in range(len(wall[k]))] for k in wall}
    if rank != 0:
        return
    load_end = os.getloadavg()[0]
    ratio = {k: [b / o for b, o in zip(cpu["bare torchrec"], cpu[k])] for k in runs}
    wall_ratio = {k: [b / o for b, o in zip(wall["bare torchrec"], wall[k])] for k in runs}
    print(f"demo DLRM (full tables, dim {cfg.model.embedding_dim}), batch {args.batch_size} per rank, {world} gloo "
          f"rank(s), {args.rounds} rounds x {args.steps} steps, load average {load_start:.1f} -> {load_end:.1f}")
    print(f"plans: compactrec {plan_summary(ours[0])}; bare {plan_summary(bare)}")
    print("| loop | CPU ms / step | wall ms / step | speed vs bare (median [min, max] of per-round CPU ratios) | wall ratio |")
    print("|---|---|---|---|---|")
    for k in runs:
        print(f"| {k} | {statistics.median(cpu[k]):.1f} | {statistics.median(wall[k]):.1f} | "
              f"{statistics.median(ratio[k]):.2f}x [{min(ratio[k]):.2f}, {max(ratio[k]):.2f}] | "
              f"{statistics.median(wall_ratio[k]):.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "world_size": world, "cpu_ms": cpu, "wall_ms": wall,
                                               "speed_vs_bare": ratio, "load_average": [load_start, load_end]}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
