"""Dense engine: per-rank optimizer-state bytes and step time, DDP vs DeepSpeed ZeRO-1/2/3.

    python benchmarks/dense_engine.py [--batch-size 2048] [--rounds 5] [--warmup 1] [--optim adagrad]

Model: TorchRec's DLRM_DCN with MLPerf DLRMv2's dense sizes: 13 dense inputs, bottom MLP
512-256-128, 26 sparse features of dim 128 (so the interaction input is 27 x 128 = 3456),
3 low-rank (512) cross layers, top MLP 1024-1024-512-256-1: 16.0 M dense parameters. The
26 tables are small (1000 rows): they are not what is measured, they only give the dense
part its MLPerf input width. Tables: DMP, table-wise, fused row-wise Adagrad.

Two gloo ranks on this machine, one thread each. Every variant is built in both ranks from
the same weights; then the variants take one step each in turn for ``--rounds`` rounds
(warm-up rounds dropped), so background load hits all of them alike. Step time is the
slowest rank's forward + backward + optimizer step on the same batch, median over rounds.
Memory is counted from the tensors themselves on each rank:

- optimizer state: the dense optimizer's state tensors (Adagrad: ``sum``; Adam: two moments)
- master weights: copies of the weights the optimizer updates (ZeRO keeps an fp32
  partition beside the module's parameters, also in fp32 training)
- dense weights: the dense parameters a rank holds (ZeRO-3 keeps its partition plus the
  parameters under DeepSpeed's persistence threshold, 1e5 elements, whole)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Dict, List

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from compactrec.logs import quiet_third_party  # noqa: E402

NUM_DENSE, NUM_SPARSE, ROWS, DIM = 13, 26, 1000, 128
VARIANTS = [("ddp", None), ("zero-1", 1), ("zero-2", 2), ("zero-3", 3)]
MIB = 1 << 20


def _build_model(seed: int) -> torch.nn.Module:
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from compactrec.trainer.config import ModelConfig, OptimConfig
    from compactrec.trainer.model import build_model
    from compactrec.trainer.optim import apply_sparse_optimizer

    torch.manual_seed(seed)
    tables = [
        EmbeddingBagConfig(name=f"t_cat_{i}", embedding_dim=DIM, num_embeddings=ROWS, feature_names=[f"cat_{i}"])
        for i in range(NUM_SPARSE)
    ]
    cfg = ModelConfig(
        arch="dcn", embedding_dim=DIM, dense_arch=[512, 256, 128], over_arch=[1024, 1024, 512, 256, 1],
        dcn_num_layers=3, dcn_low_rank_dim=512,
    )
    model = build_model(cfg, EmbeddingBagCollection(tables=tables), NUM_DENSE)
    apply_sparse_optimizer(model, OptimConfig())
    return model


def _batch(batch_size: int, seed: int):
    from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

    from compactrec.data.reader.batch import Batch

    g = torch.Generator().manual_seed(seed)
    return Batch(
        dense_features=torch.rand(batch_size, NUM_DENSE, generator=g),
        sparse_features=KeyedJaggedTensor(
            keys=[f"cat_{i}" for i in range(NUM_SPARSE)],
            values=torch.randint(0, ROWS, (NUM_SPARSE * batch_size,), generator=g),
            lengths=torch.ones(NUM_SPARSE * batch_size, dtype=torch.int32),
        ),
        labels=torch.randint(0, 2, (batch_size,), generator=g).float(),
    )


def _dense_weight_bytes(engine) -> int:
    """Dense parameter bytes this rank holds (ZeRO-3: its partition + persistent ones)."""
    from torchrec.optim.optimizers import in_backward_optimizer_filter

    total = 0
    for _, p in in_backward_optimizer_filter(engine.model.named_parameters()):
        total += p.data.numel() * p.element_size()
        if hasattr(p, "ds_tensor"):
            total += p.ds_tensor.numel() * p.ds_tensor.element_size()
    return total


def _ranks(rank: int, world: int, args: Dict[str, Any], out: str) -> None:
    import torch.distributed as dist

    from compactrec.sharding.env import DistEnv, all_gather_object
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict
    from compactrec.trainer.config import DeepSpeedConfig, DenseConfig, OptimConfig
    from compactrec.trainer.dense_engine import build_dense_engine

    quiet_third_party()
    torch.set_num_threads(1)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    optim = OptimConfig(dense=args["optim"], dense_lr=args["lr"])  # small lr: no overflow on random labels
    full = _build_model(0).state_dict()
    engines = {}
    for name, stage in VARIANTS:
        dense = DenseConfig(engine="ddp") if stage is None else DenseConfig(
            engine="deepspeed", deepspeed=DeepSpeedConfig(zero_stage=stage)
        )
        dmp = shard_model(_build_model(0), ["table_wise"], {}, env, data_parallel=stage is None)
        load_full_state_dict(dmp, full)
        engines[name] = build_dense_engine(dense, optim, dmp, env)
    batch = _batch(args["batch_size"], seed=rank)
    times: Dict[str, List[float]] = {name: [] for name in engines}
    losses: Dict[str, List[float]] = {name: [] for name in engines}
    for r in range(args["warmup"] + args["rounds"]):
        for name, engine in engines.items():
            dist.barrier()
            t0 = time.perf_counter()
            loss, _ = engine.forward(batch)
            engine.zero_grad()
            engine.backward(loss)
            engine.step()
            elapsed = max(all_gather_object(time.perf_counter() - t0))
            losses[name].append(sum(all_gather_object(float(loss.detach()))) / world)
            if r >= args["warmup"]:
                times[name].append(elapsed)
    memory = {name: {**e.memory_report(), "dense_weights": _dense_weight_bytes(e)} for name, e in engines.items()}
    gathered = all_gather_object(memory)
    if rank == 0:
        torch.save({"times": times, "losses": losses, "memory": gathered}, out)


def _table(result: Dict[str, Any], args: argparse.Namespace) -> str:
    times, memory = result["times"], result["memory"]
    base_t = statistics.median(times["ddp"])
    base_m = max(m["ddp"]["optimizer_state"] for m in memory)
    lines = [
        f"DCNv2, MLPerf DLRMv2 dense sizes; {args.optim}; 2 gloo ranks x 1 thread (CPU); "
        f"batch {args.batch_size} per rank; median of {args.rounds} rounds after {args.warmup} warm-up",
        "",
        "| dense engine | optimizer state / rank | master weights / rank | dense weights / rank "
        "| state + master vs DDP | step time (median) | vs DDP |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _ in VARIANTS:
        per_rank = [m[name] for m in memory]
        state = max(m["optimizer_state"] for m in per_rank)
        master = max(m["master_weights"] for m in per_rank)
        weights = max(m["dense_weights"] for m in per_rank)
        t = statistics.median(times[name])
        lines.append(
            f"| {name} | {state / MIB:.1f} MiB | {master / MIB:.1f} MiB | {weights / MIB:.1f} MiB "
            f"| {(state + master) / base_m:.2f}x | {t * 1e3:.0f} ms | {t / base_t:.2f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=2048, help="per rank")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--optim", default="adagrad", choices=["adagrad", "adam", "sgd"])
    p.add_argument("--lr", type=float, default=1e-4, help="dense learning rate")
    args = p.parse_args()
    quiet_third_party()
    from compactrec.sharding.env import spawn

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.pt")
        t0 = time.perf_counter()
        spawn(_ranks, 2, vars(args), out)
        result = torch.load(out, weights_only=False)
    final = {name: round(v[-1], 6) for name, v in result["losses"].items()}
    print(_table(result, args))
    print(f"\nlast loss per variant (same batches, should agree): {final}; wall {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
