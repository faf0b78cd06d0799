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
from compactrec.sharding.planner import DENSE_RESERVE

GB = 1024**3


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
        from compactrec.trainer.features import trainable_schema

        return trainable_schema(read_manifest(cfg.data.path).schema, print), f"manifest {manifest_path(cfg.data.path)}"
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


def _table_shapes(model: nn.Module) -> Dict[str, Tuple[int, int, int]]:
    """Table name -> (rows, dim, bytes per stored value at its ``data_type``)."""
    from torchrec.modules.embedding_configs import data_type_to_dtype

    from compactrec.embeddings.precision import collections

    shapes = {}
    for _, configs, _ in collections(model):
        for c in configs:
            elem = torch.tensor([], dtype=data_type_to_dtype(c.data_type)).element_size()
            shapes[c.name] = (c.num_embeddings, c.embedding_dim, elem)
    return shapes


def plan_rows(model: nn.Module, plan: ShardingPlan, sparse_optimizer: str) -> Tuple[List[TableRow], int]:
    """Per table, the bytes each rank holds; and the bytes every rank replicates."""
    from compactrec.sharding.planner import method_state

    from compactrec.embeddings.precision import OPTIMIZER_STATE, STATE_BYTES

    per_row_extra, replicated = method_state(model)
    per_row_state, per_elem_state = (n * STATE_BYTES for n in OPTIMIZER_STATE[sparse_optimizer])
    shapes = _table_shapes(model)
    rows: List[TableRow] = []
    for module_plan in plan.plan.values():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            per_rank: Dict[int, int] = {}
            rows_, dim, elem = shapes[table]
            for shard in ps.sharding_spec.shards:  # type: ignore[union-attr]
                r, c = shard.shard_sizes
                rank = shard.placement.rank()
                b = r * c * (elem + per_elem_state) + r * per_row_state + int(r * per_row_extra.get(table, 0) * c / dim)
                per_rank[rank] = per_rank.get(rank, 0) + b
            rows.append(TableRow(table, (rows_, dim), ps.sharding_type, per_rank))
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


@dataclass
class RankRow:
    """One rank's share of the plan: sharded bytes, its table shards, TorchRec's estimates."""

    rank: int
    bytes: int  # sharded state on this rank (from the plan's shard sizes) + replicated state
    tables: int
    types: List[str]
    lookup_ms: float  # estimated forward + backward lookup compute per step
    comms_ms: float  # estimated forward + backward all_to_all (input ids, pooled output) per step


def rank_rows(rows: List[TableRow], replicated: int, world: int, options: list) -> List[RankRow]:
    """Per rank: bytes and table shards from ``rows``; TorchRec's perf estimates (``Perf``,
    in ms) from the planner's chosen ``options``."""
    out = []
    for r in range(world):
        mine = [t for t in rows if r in t.per_rank]
        out.append(RankRow(r, replicated + sum(t.per_rank[r] for t in mine), len(mine),
                           sorted({t.sharding_type for t in mine}), 0.0, 0.0))
    for so in options:
        for shard in so.shards:
            if shard.rank is None or shard.perf is None:
                continue
            p = shard.perf
            out[shard.rank].lookup_ms += p.fwd_compute + p.bwd_compute
            out[shard.rank].comms_ms += p.fwd_comms + p.bwd_comms
    return out


def format_ranks(ranks: List[RankRow], cap_bytes: Optional[int]) -> str:
    """The per-rank table and the headroom line (what the fullest rank has left)."""
    lines = ["", "| rank | GB | tables | sharding types | est. lookup ms | est. all_to_all ms |", "|---|---|---|---|---|---|"]
    for r in ranks:
        lines.append(f"| {r.rank} | {_gb(r.bytes)} | {r.tables} | {','.join(r.types) or '-'} | "
                     f"{r.lookup_ms:.3f} | {r.comms_ms:.3f} |")
    worst = max(ranks, key=lambda r: r.bytes)
    if cap_bytes:
        usable = cap_bytes * (1 - DENSE_RESERVE)
        lines += ["", f"- headroom: the fullest rank ({worst.rank}) uses {_gb(worst.bytes)} of {_gb(usable)} GB "
                      f"usable ({_gb(cap_bytes)} GB less {DENSE_RESERVE:.0%} reserved): {_gb(usable - worst.bytes)} GB left "
                      f"({1 - worst.bytes / usable:.0%})"]
    slowest = max(ranks, key=lambda r: r.lookup_ms + r.comms_ms)
    lines.append(f"- slowest rank by estimate: {slowest.rank} ({slowest.lookup_ms + slowest.comms_ms:.3f} ms per step)")
    return "\n".join(lines)


def _hosts(n: int) -> str:
    return f"{n} host" + ("s" if n != 1 else "")


class PlanDoesNotFit(ValueError):
    """The plan does not fit the devices; the message says what would."""


def _plan(cfg: RunConfig, model: nn.Module, world: int, device: str, hbm_gb: Optional[float], local_world: int,
          options: Optional[list] = None) -> ShardingPlan:
    from compactrec.sharding.planner import default_sharders, plan_model

    return plan_model(
        model, world, device, cfg.sharding.types, cfg.sharding.per_table, default_sharders(),
        hbm_bytes=int(hbm_gb * GB) if hbm_gb else None, collective=False, local_world_size=local_world,
        batch_size=cfg.data.batch_size, options=options,
    )


def _no_fit(cfg: RunConfig, model: nn.Module, world: int, device: str, hbm_gb: Optional[float], local_world: int,
            err: Exception) -> PlanDoesNotFit:
    """One paragraph: what did not fit, and the smallest world size (whole hosts) that does."""
    from torchrec.distributed.planner.types import PlannerError

    def fits_on(hosts: int) -> bool:
        try:
            _plan(cfg, model, hosts * local_world, device, hbm_gb, local_world)
            return True
        except PlannerError:
            return False

    # doubling, then bisection over whole hosts: a handful of plans, not one per host count
    lo, hi, limit = world // local_world, None, 8 * max(1, world // local_world)
    probe = max(1, lo) * 2
    while probe <= limit and hi is None:
        if fits_on(probe):
            hi = probe
        else:
            lo, probe = probe, probe * 2
    while hi is not None and hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits_on(mid) else (mid, hi)
    fits = hi * local_world if hi is not None else None
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
    cap = f"{hbm_gb:g} GB each" if hbm_gb else "the default device memory"
    hint = (f"The smallest world size that fits is {fits} ({fits // local_world} hosts x {local_world}); "
            f"or raise compression.ratio." if fits else
            f"No world size up to {limit * local_world} fits; raise compression.ratio "
            f"(now {cfg.compression.ratio:g}) or give the devices more memory.")
    return PlanDoesNotFit(
        f"{cfg.name}: the {cfg.embedding.kind} tables do not fit {world} ranks ({_hosts(world // local_world)} x "
        f"{local_world}, {device}, {cap}, batch {cfg.data.batch_size} per rank); TorchRec's planner says: {first} "
        + hint
    )


def make_plan(cfg: RunConfig, world: int, hbm_gb: Optional[float], local_world: Optional[int]) -> str:
    """The printed plan: per table, totals, per rank (bytes, tables, types, estimated costs),
    headroom. Raises ``PlanDoesNotFit`` (one paragraph) when the tables do not fit."""
    from torchrec.distributed.planner.types import PlannerError

    from compactrec.embeddings.precision import check_precision

    device = "cuda" if hbm_gb is not None or cfg.cluster.use_gpu else "cpu"
    check_precision(cfg.embedding.precision, torch.device(device))
    schema, source = plan_schema(cfg)
    model = build_meta_model(cfg, schema)
    local_world = local_world or world
    options: list = []
    try:
        plan = _plan(cfg, model, world, device, hbm_gb, local_world, options)
    except PlannerError as err:
        raise _no_fit(cfg, model, world, device, hbm_gb, local_world, err) from None
    rows, replicated = plan_rows(model, plan, cfg.optim.sparse)
    from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
    from compactrec.trainer.model import embedding_module

    emb = embedding_module(model)

    used, full = module_bytes(emb), full_embedding_bytes(schema, cfg.model.embedding_dim)
    title = (
        f"{cfg.name}: {cfg.embedding.kind} ({cfg.embedding.precision} tables), {world} ranks = {_hosts(world // local_world)} x {local_world} ({device}"
        + (f", {hbm_gb:g} GB HBM each" if hbm_gb else "")
        + f", batch {cfg.data.batch_size} per rank); embeddings {_gb(used)} GB vs full {_gb(full)} GB = "
        + f"{full / used:.1f}x; schema from {source}"
    )
    ranks = rank_rows(rows, replicated, world, options)
    return format_plan(rows, replicated, world, title) + "\n" + format_ranks(ranks, int(hbm_gb * GB) if hbm_gb else None)
