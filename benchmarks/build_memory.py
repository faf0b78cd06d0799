"""Peak host memory per rank while a Criteo-TB-shaped model is built and sharded.

    python benchmarks/build_memory.py [--full-gb 8] [--ranks 4] [--kind full] [--mode meta|host]

The model is ``configs/criteo_tb_full.yaml``'s (DCNv2, dim 128, the 26 Criteo-TB features with
the 40M cap), its cardinalities scaled so the full tables hold ``--full-gb`` GB. Each of
``--ranks`` gloo ranks (CPU, as on the project's machines) builds it and wraps it in DMP the
way the training loop does:

- ``meta`` (the loop today): tables on the meta device (``embeddings.base.tables_on``), the rest
  on the rank's device; DMP materialises only the rank's own shards;
- ``host`` (the loop before): the whole unsharded model built on the host, then sharded.

Printed per rank, as JSON lines: peak RSS (``ru_maxrss``) minus the RSS before the build,
the rank's own shard bytes (table shards + their fused optimizer state), the replicated
bytes (dense parameters, buffers), and ``ratio = (peak - before) / (shard + replicated)``
(goal: < 1.5 in ``meta`` mode). ``host`` mode needs the whole model on every rank: run it
with fewer GB (``--full-gb 1``) on a 24 GiB box.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
from pathlib import Path
from typing import Any, Dict

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _schema(full_gb: float, dim: int):
    from compactrec.data.convert.criteo import CRITEO_TB_40M, DENSE_NAMES, LABEL, SPARSE_NAMES
    from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

    scale = full_gb * 1e9 / (sum(CRITEO_TB_40M) * dim * 4)
    sparse = tuple(SparseFeature(n, max(2, int(c * scale))) for n, c in zip(SPARSE_NAMES, CRITEO_TB_40M))
    return FeatureSchema(label=LABEL, dense=tuple(DENSE_NAMES), sparse=sparse)


def _local_bytes(model) -> Dict[str, int]:
    """This rank's bytes: sharded state (tables + fused optimizer state) and plain tensors."""
    from torch.distributed._shard.sharded_tensor import ShardedTensor
    from torch.distributed.tensor import DTensor

    def split(state) -> Dict[str, int]:
        shard = replicated = 0
        for t in state.values():
            if isinstance(t, ShardedTensor):
                shard += sum(s.tensor.numel() * s.tensor.element_size() for s in t.local_shards())
            elif isinstance(t, DTensor):
                local = t.to_local()
                shard += local.numel() * local.element_size()
            elif hasattr(t, "numel"):
                replicated += t.numel() * t.element_size()
        return {"shard": shard, "replicated": replicated}

    weights = split(model.state_dict())
    flat_optim: Dict[str, Any] = {}  # {param: {state name: tensor}} -> one flat dict
    for key, value in model.fused_optimizer.state_dict()["state"].items():
        for name, t in value.items():
            flat_optim[f"{key}.{name}"] = t
    optim = split(flat_optim)
    return {"shard": weights["shard"] + optim["shard"], "replicated": weights["replicated"] + optim["replicated"]}


def _rank(rank: int, world: int, args: Dict[str, Any]) -> None:
    import torch

    from compactrec.embeddings.base import tables_on
    from compactrec.embeddings.factory import build_embeddings
    from compactrec.sharding.env import DistEnv
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.model import build_model
    from compactrec.trainer.optim import apply_sparse_optimizer

    torch.set_num_threads(1)
    cfg = load_config(str(REPO / "configs" / "criteo_tb_full.yaml"), [f"embedding.kind={args['kind']}"])
    schema = _schema(args["full_gb"], cfg.model.embedding_dim)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    before = _rss_bytes()

    def build():
        emb = build_embeddings(cfg.embedding, cfg.compression, schema, cfg.model.embedding_dim, env.device)
        model = build_model(cfg.model, emb, len(schema.dense), env.device)
        apply_sparse_optimizer(model, cfg.optim)
        return model

    if args["mode"] == "meta":
        with tables_on("meta"):
            model = build()
    else:
        model = build()
    dmp = shard_model(model, cfg.sharding.types, cfg.sharding.per_table, env)
    peak = _peak_bytes()
    own = _local_bytes(dmp)
    row = {
        "rank": rank, "world": world, "mode": args["mode"], "kind": args["kind"], "full_gb": args["full_gb"],
        "rss_before_gb": before / 1e9, "peak_gb": peak / 1e9, "peak_minus_before_gb": (peak - before) / 1e9,
        "shard_gb": own["shard"] / 1e9, "replicated_gb": own["replicated"] / 1e9,
        "ratio": (peak - before) / max(1, own["shard"] + own["replicated"]),
    }
    print(json.dumps(row), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full-gb", type=float, default=8.0)
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--kind", default="full")
    p.add_argument("--mode", choices=["meta", "host"], default="meta")
    a = p.parse_args()
    from compactrec.logs import quiet_third_party

    quiet_third_party()
    from compactrec.sharding.env import spawn

    spawn(_rank, a.ranks, {"full_gb": a.full_gb, "kind": a.kind, "mode": a.mode})


if __name__ == "__main__":
    main()
