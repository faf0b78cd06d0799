"""Planning the sharding of every embedding table: constraints, storage, a printable plan.

- Constraints: every table gets FBGEMM's fused kernel and the requested sharding types its
  module supports. CPU trap (docs/stack.md): a table the planner puts data-parallel with the
  dense kernel is never updated on CPU, so data_parallel is never offered; the stock
  sharders offer row_wise / table_row_wise only on CUDA, ours on CPU too (FBGEMM's CPU
  kernels run them exactly).
- Storage: TorchRec's estimator counts each table shard (weights, optimizer state, I/O).
  What a method keeps besides tables is added where it lives: CAFE's sketch per hot-table
  row (the sketch shard sits with its rows), and state every rank replicates (dense MLPs,
  MDE projections and id maps, with optimizer state) is reserved on every device.
- Report: table, sharding type, ranks and bytes per rank, without building real tables
  (plan a Criteo-TB cluster from a laptop: the model is built on the meta device).
"""

from __future__ import annotations

import copy
from typing import Dict, List, Optional, Sequence, Tuple

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.enumerators import EmbeddingEnumerator
from torchrec.distributed.planner.shard_estimators import EmbeddingPerfEstimator, EmbeddingStorageEstimator
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    ShardEstimator,
    ShardingOption,
    Topology,
    TopologyFactory,
)
from torchrec.distributed.planner.types import TrainerConfig as PlannerTrainerConfig
from torchrec.distributed.types import ModuleSharder, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

MODEL_PARALLEL_TYPES: List[str] = [
    ShardingType.TABLE_WISE.value,
    ShardingType.ROW_WISE.value,
    ShardingType.COLUMN_WISE.value,
    ShardingType.TABLE_ROW_WISE.value,
    ShardingType.TABLE_COLUMN_WISE.value,
]
FUSED = "fused"


class _ModelParallelOnly:
    """Mixin: offer every model-parallel sharding type on any device, never data_parallel."""

    def sharding_types(self, compute_device_type: str) -> List[str]:
        return list(MODEL_PARALLEL_TYPES)


class EBCSharder(_ModelParallelOnly, EmbeddingBagCollectionSharder):
    pass


class ECSharder(_ModelParallelOnly, EmbeddingCollectionSharder):
    def sharding_types(self, compute_device_type: str) -> List[str]:
        # The unpooled collection has no table_row_wise / table_column_wise sharding.
        return [
            ShardingType.TABLE_WISE.value,
            ShardingType.ROW_WISE.value,
            ShardingType.COLUMN_WISE.value,
        ]


def default_sharders() -> List[ModuleSharder[nn.Module]]:
    return [EBCSharder(), ECSharder()]  # type: ignore[list-item]


def embedding_tables(model: nn.Module) -> Dict[str, Tuple[int, List[str]]]:
    """Table name -> (rows, sharding types its module supports), for every stock TorchRec
    embedding module inside ``model``."""
    tables: Dict[str, Tuple[int, List[str]]] = {}
    for module in model.modules():
        if isinstance(module, EmbeddingBagCollection):
            configs, supported = module.embedding_bag_configs(), EBCSharder().sharding_types("cpu")
        elif isinstance(module, EmbeddingCollection):
            configs, supported = module.embedding_configs(), ECSharder().sharding_types("cpu")
        else:
            continue
        for c in configs:
            if c.name in tables:
                raise ValueError(f"two embedding tables are named '{c.name}'")
            tables[c.name] = (c.num_embeddings, supported)
    return tables


def table_constraints(
    model: nn.Module, types: Sequence[str], per_table: Dict[str, List[str]], world_size: int = 0
) -> Dict[str, ParameterConstraints]:
    """Every table gets the fused kernel and the requested sharding types that its module
    supports (unpooled collections have no table_row_wise); CAFE's hot table is kept whole
    per row so its sketch shard owns whole rows: row_wise over every rank, or table_wise
    when ``per_table`` asks for it or ``world_size`` is 1 (one rank holds it whole either way)."""
    from compactrec.embeddings.cafe import HOT_TABLE
    from compactrec.sharding.cafe import HOT_TABLE_TYPES

    tables = embedding_tables(model)
    unknown = sorted(set(per_table) - set(tables))
    if unknown:
        raise ValueError(f"sharding.per_table names unknown tables {unknown}; tables: {sorted(tables)}")
    out = {}
    for name, (_, supported) in tables.items():
        requested = list(per_table.get(name, types))
        bad = [t for t in requested if t not in MODEL_PARALLEL_TYPES]
        if bad:
            raise ValueError(
                f"table '{name}': sharding types {bad} not supported; choose from {MODEL_PARALLEL_TYPES}"
            )
        if name == HOT_TABLE:
            supported = [t for t in supported if t in HOT_TABLE_TYPES]
            # row-wise by default: the hot rows and their sketch shard spread over every rank
            # (table-wise put 5.6M hot rows + sketch on one of 64 ranks: 3.24 GB vs 0.28 GB
            # mean, and every query through that rank); table-wise only when asked by name, or
            # on one rank: there row_wise bought nothing and cost the hot table a TBE, an input
            # dist and a bucketize of its own (docs/speed.md, session 9)
            default = ["table_wise"] if world_size == 1 else ["row_wise"]
            requested = [t for t in per_table.get(name, default) if t in supported] or default
        allowed = [t for t in requested if t in supported]
        if not allowed:
            raise ValueError(
                f"table '{name}': none of the sharding types {requested} applies; it takes {supported}"
            )
        out[name] = ParameterConstraints(sharding_types=allowed, compute_kernels=[FUSED])
    return out


def _prefer_table_wise(constraints: Dict[str, ParameterConstraints]) -> None:
    """One rank: every sharding type stores a table whole on that rank, but row_wise (and
    table_row_wise) still bucketizes every id by row block before a 1-rank all-to-all: a
    full-table DLRM step at batch 128 on CPU took 0.92x [0.77, 1.06] the time with every
    table table_wise as with every table row_wise (10 alternating rounds, CPU time; the
    stock plan mixed both). Where table_wise is allowed, it is the only choice on one rank."""
    for c in constraints.values():
        if c.sharding_types and ShardingType.TABLE_WISE.value in c.sharding_types:
            c.sharding_types = [ShardingType.TABLE_WISE.value]


DENSE_RESERVE = 0.15  # share of each rank's memory kept for dense parts, inputs, buffers


def make_topology(
    world_size: int,
    device_type: str,
    local_world_size: int,
    hbm_bytes: Optional[int] = None,
    ddr_bytes: Optional[int] = None,
) -> Topology:
    """TorchRec's topology: ``local_world_size`` ranks per host (the planner costs
    intra-host links as faster than inter-host ones, so a 64-rank job on 8 hosts is not one
    host of 64)."""
    if local_world_size < 1 or world_size % local_world_size:
        raise ValueError(f"world size {world_size} is not a whole number of hosts of {local_world_size} ranks")
    return TopologyFactory.create_topology(
        trainer_config=PlannerTrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size,
            hbm_cap_bytes=hbm_bytes,
            ddr_cap_bytes=ddr_bytes,
        ),
        kernel_config=KernelConfig(compute_device=device_type),
    )


def local_world_size_of_job(world_size: int) -> int:
    """Ranks per host of the running job: ``LOCAL_WORLD_SIZE`` (set by Ray Train, torchrun),
    else the ranks that share this rank's host name (all-gathered), else all ``world_size``
    (one process tree: ``sharding.env.spawn``)."""
    import os
    import socket

    if os.environ.get("LOCAL_WORLD_SIZE"):
        return int(os.environ["LOCAL_WORLD_SIZE"])
    if dist.is_initialized() and dist.get_world_size() == world_size:
        hosts: List[str] = [""] * world_size
        dist.all_gather_object(hosts, socket.gethostname())
        return hosts.count(socket.gethostname())
    return world_size


def plan_model(
    model: nn.Module,
    world_size: int,
    device_type: str,
    types: Sequence[str],
    per_table: Dict[str, List[str]],
    sharders: List[ModuleSharder[nn.Module]],
    hbm_bytes: Optional[int] = None,
    collective: bool = True,
    local_world_size: Optional[int] = None,
    batch_size: int = 0,
    options: Optional[List[ShardingOption]] = None,
) -> ShardingPlan:
    """TorchRec's planner with our constraints and method-aware storage (see module doc).

    ``batch_size``: the job's per-rank batch (sizes input/output buffers and the cost
    estimates; 0: ``BATCH_SIZE``); ``local_world_size``: ranks per host (None: the running
    job's, ``local_world_size_of_job``); ``options``: when given, filled with the chosen
    sharding options (each shard's rank, storage and estimated perf) for reports."""
    if local_world_size is None:
        local_world_size = local_world_size_of_job(world_size)
    batch = batch_size or BATCH_SIZE
    topology = make_topology(world_size, device_type, local_world_size, hbm_bytes=hbm_bytes)
    constraints = table_constraints(model, types, per_table, world_size)
    if world_size == 1:
        _prefer_table_wise(constraints)
    per_row, replicated = method_state(model)
    estimators: List[ShardEstimator] = [
        EmbeddingPerfEstimator(topology, constraints),
        MethodStorageEstimator(topology, constraints, per_row),
    ]
    planner = EmbeddingShardingPlanner(
        topology=topology,
        constraints=constraints,
        enumerator=EmbeddingEnumerator(topology, batch, constraints, estimators),
        batch_size=batch,
        storage_reservation=ReplicatedStateReservation(DENSE_RESERVE, replicated),
    )
    if collective and dist.is_initialized():
        plan = planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    else:
        plan = planner.plan(model, sharders)
    if options is not None:
        options[:] = list(planner._best_plan or [])  # TorchRec keeps the chosen options here
    return plan


BATCH_SIZE = 512  # per rank, when the caller does not say (the job's data.batch_size)


def _tables_inside(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection))]


def method_state(model: nn.Module) -> Tuple[Dict[str, float], int]:
    """(extra bytes per row of a table, bytes every rank replicates).

    Per row: CAFE's sketch (buckets, slots and bookkeeping) per hot row. Replicated: every
    parameter and buffer outside the embedding collections (dense MLPs, interaction,
    MDE projections and id maps), parameters counted twice (weights + one optimizer
    state, Adagrad's), plus DDP's gradient buffer for them.
    """
    from compactrec.embeddings.cafe import HOT_TABLE, CafeEmbedding
    from compactrec.embeddings.hotsketch import HotSketch

    per_row: Dict[str, float] = {}
    skip = set()
    for m in model.modules():
        if isinstance(m, CafeEmbedding) and m.sketch is not None and m.plan.hot_rows:
            sketch = HotSketch.state_bytes(m.plan.buckets, m.plan.hot_rows, m.cfg.slots)
            per_row[HOT_TABLE] = sketch / m.plan.hot_rows
            skip |= {id(t) for t in m.sketch.buffers()}
    for t in _tables_inside(model):
        skip |= {id(p) for p in t.parameters()} | {id(b) for b in t.buffers()}
    replicated = 0
    for p in model.parameters():
        if id(p) not in skip:
            replicated += 3 * p.numel() * p.element_size()  # weights, Adagrad state, gradient
    for b in model.buffers():
        if id(b) not in skip:
            replicated += b.numel() * b.element_size()
    return per_row, replicated


class MethodStorageEstimator(ShardEstimator):
    """TorchRec's storage estimate per shard, plus state a method keeps per table row."""

    def __init__(self, topology: Topology, constraints: Dict[str, ParameterConstraints], per_row: Dict[str, float]):
        self._base = EmbeddingStorageEstimator(topology, constraints)
        self._per_row = per_row
        self._cuda = topology.compute_device == "cuda"

    def estimate(self, sharding_options: List[ShardingOption], sharder_data_map=None) -> None:
        self._base.estimate(sharding_options, sharder_data_map)
        for so in sharding_options:
            extra = self._per_row.get(so.name)
            if not extra:
                continue
            for shard in so.shards:
                # a column shard holds a slice of each row; the sketch follows whole rows
                share = shard.size[1] / so.tensor.shape[1]
                add = int(shard.size[0] * extra * share)
                if shard.storage is not None:
                    if self._cuda:
                        shard.storage.hbm += add
                    else:
                        shard.storage.ddr += add


class ReplicatedStateReservation(FixedPercentageStorageReservation):
    """A share of each device for activations and inputs, plus the replicated state."""

    def __init__(self, percentage: float, replicated_bytes: int) -> None:
        super().__init__(percentage)
        self._replicated = replicated_bytes

    def reserve(self, topology, batch_size, module, sharders, constraints=None) -> Topology:
        reserved = super().reserve(topology, batch_size, module, sharders, constraints)
        for device in reserved.devices:
            if topology.compute_device == "cuda":
                device.storage.hbm = max(0, device.storage.hbm - self._replicated)
            else:
                device.storage.ddr = max(0, device.storage.ddr - self._replicated)
        self._last_reserved_topology = copy.deepcopy(reserved)
        return reserved
