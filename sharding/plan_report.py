"""``compactrec plan``: the sharding plan of a config for N ranks, without training.

The model is built on the meta device (a Criteo-TB plan needs no 100 GB of tables), planned
with the same planner as training (``sharding/planner.py``), and printed per table: sharding
type, ranks, bytes on each rank (weights + sparse optimizer state + what the method keeps
per row, e.g. CAFE's sketch), then per rank with the replicated state (dense part, MDE
projections and id maps) that every rank holds.

    compactrec plan configs/criteo_tb_cafe.yaml --world-size 64 --hbm-gb 80
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchrec.distributed.types import ShardingPlan

from compactrec.trainer.config import RunConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature, manifest_path, read_manifest

GB = 1024**3
# Sparse optimizer state in bytes per (row, column) of a shard: (per row, per element)
_STATE = {"rowwise_adagrad": (4, 0), "adagrad": (0, 4), "sgd": (0, 0)}


@dataclass
class TableRow:
    table: str
    shape: Tuple[int, int]
    sharding_type: str
    per_rank: Dict[int, int]  # rank -> bytes


def plan_schema(cfg: RunConfig) -> Tuple[FeatureSchema, str]:
    """The data's manifest if there is one, else the schema the synthetic generator writes
    for ``cfg.synth`` (e.g. Criteo-TB's real cardinalities with scale 1)."""
    if "://" not in cfg.data.path and manifest_path(cfg.data.path).exists():
        return read_manifest(cfg.data.path).schema, f"manifest {manifest_path(cfg.data.path)}"
    from compactrec.data.convert import criteo
    from compactrec.data.datasets.synthetic import synthetic_cardinalities

    cards = synthetic_cardinalities(cfg.synth)
    sparse = tuple(SparseFeature(n, c) for n, c in zip(criteo.SPARSE_NAMES, cards))
    what = f"synth.cardinalities={cfg.synth.cardinalities} scale={cfg.synth.scale}"
    return FeatureSchema("label", tuple(criteo.DENSE_NAMES), sparse), what


def build_meta_model(cfg: RunConfig, schema: FeatureSchema) -> nn.Module:
    from compactrec.embeddings.factory import build_embeddings
    from compactrec.trainer.model import build_model
    from compactrec.trainer.optim import apply_sparse_optimizer

    meta = torch.device("meta")
    emb = build_embeddings(cfg.embedding, cfg.compression, schema, cfg.model.embedding_dim, meta)
    model = build_model(cfg.model, emb, len(schema.dense), meta)
    apply_sparse_optimizer(model, cfg.optim)
    return model


def _table_shapes(model: nn.Module) -> Dict[str, Tuple[int, int]]:
    from compactrec.sharding.planner import _tables_inside

    shapes = {}
    for m in _tables_inside(model):
        configs = m.embedding_bag_configs() if hasattr(m, "embedding_bag_configs") else m.embedding_configs()
        for c in configs:
            shapes[c.name] = (c.num_embeddings, c.embedding_dim)
    return shapes


def plan_rows(model: nn.Module, plan: ShardingPlan, sparse_optimizer: str) -> Tuple[List[TableRow], int]:
    """Per table, the bytes each rank holds; and the bytes every rank replicates."""
    from compactrec.sharding.planner import method_state

    per_row_extra, replicated = method_state(model)
    per_row_state, per_elem_state = _STATE[sparse_optimizer]
    shapes = _table_shapes(model)
    rows: List[TableRow] = []
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            per_rank: Dict[int, int] = {}
            _, dim = shapes[table]
            for shard in ps.sharding_spec.shards:  # type: ignore[union-attr]
                r, c = shard.shard_sizes
                rank = shard.placement.rank()
                b = r * c * (4 + per_elem_state) + r * per_row_state + int(r * per_row_extra.get(table, 0) * c / dim)
                per_rank[rank] = per_rank.get(rank, 0) + b
            rows.append(TableRow(table, shapes[table], ps.sharding_type, per_rank))
    return rows, replicated


def _gb(b: float) -> str:
    return f"{b / GB:.2f}"


def format_plan(rows: List[TableRow], replicated: int, world: int, title: str) -> str:
    lines = [f"### {title}", "", "| table | rows x dim | sharding | ranks | GB per rank |", "|---|---|---|---|---|"]
    for t in sorted(rows, key=lambda t: -sum(t.per_rank.values())):
        ranks = sorted(t.per_rank)
        span = f"{ranks[0]}" if len(ranks) == 1 else f"{ranks[0]}-{ranks[-1]}" if ranks == list(range(ranks[0], ranks[-1] + 1)) else ",".join(map(str, ranks))
        sizes = sorted(set(round(b / GB, 2) for b in t.per_rank.values()))
        per = f"{sizes[0]:.2f}" if len(sizes) == 1 else f"{sizes[0]:.2f}-{sizes[-1]:.2f}"
        lines.append(f"| {t.table} | {t.shape[0]:,} x {t.shape[1]} | {t.sharding_type} | {span} | {per} |")
    totals = [replicated + sum(t.per_rank.get(r, 0) for t in rows) for r in range(world)]
    sharded = sum(sum(t.per_rank.values()) for t in rows)
    lines += [
        "",
        f"- sharded state (tables + optimizer state + per-row method state): {_gb(sharded)} GB in all",
        f"- replicated on every rank (dense part with optimizer state and gradients, projections, id maps): {_gb(replicated)} GB",
        f"- per rank: min {_gb(min(totals))} GB, max {_gb(max(totals))} GB, mean {_gb(sum(totals) / world)} GB"
        f" (max/mean {max(totals) / (sum(totals) / world):.2f})",
    ]
    return "\n".join(lines)


def make_plan(cfg: RunConfig, world: int, hbm_gb: Optional[float], local_world: Optional[int]) -> str:
    from compactrec.sharding.planner import default_sharders, plan_model

    schema, source = plan_schema(cfg)
    model = build_meta_model(cfg, schema)
    device = "cuda" if hbm_gb is not None or cfg.cluster.use_gpu else "cpu"
    plan = plan_model(
        model, world, device, cfg.sharding.types, cfg.sharding.per_table, default_sharders(),
        hbm_bytes=int(hbm_gb * GB) if hbm_gb else None, collective=False, local_world_size=local_world,
    )
    rows, replicated = plan_rows(model, plan, cfg.optim.sparse)
    from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
    from compactrec.trainer.model import embedding_module

    emb = embedding_module(model)

    used, full = module_bytes(emb), full_embedding_bytes(schema, cfg.model.embedding_dim)
    title = (
        f"{cfg.name}: {cfg.embedding.kind}, {world} ranks ({device}"
        + (f", {hbm_gb:g} GB HBM each" if hbm_gb else "")
        + f"); embeddings {_gb(used)} GB vs full {_gb(full)} GB = {full / used:.1f}x; schema from {source}"
    )
    return format_plan(rows, replicated, world, title)
