"""Apply TorchRec model parallelism to a single-device model in one call.

``model = shard_model(train_model, cfg.sharding, env)`` plans every embedding table with
TorchRec's planner and wraps the model in ``DistributedModelParallel``: tables are sharded
(FBGEMM fused kernels, the optimizer applied in backward), the dense part is wrapped in DDP.

CPU trap (STACK.md): a table that the planner puts data-parallel with the dense kernel is
never updated on CPU. So data_parallel is never offered, every table's kernel is ``fused``,
and row_wise / table_row_wise are allowed on CPU by sharders that offer them (the stock
sharders only offer them on CUDA, though FBGEMM's CPU kernels run them exactly).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch.distributed as dist
from torch import nn
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner
from torchrec.distributed.planner.storage_reservations import FixedPercentageStorageReservation
from torchrec.distributed.planner.types import (
    KernelConfig,
    ParameterConstraints,
    Topology,
    TopologyFactory,
)
from torchrec.distributed.planner.types import TrainerConfig as PlannerTrainerConfig
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan, ShardingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from compactrec.sharding.env import DistEnv

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
    model: nn.Module, types: Sequence[str], per_table: Dict[str, List[str]]
) -> Dict[str, ParameterConstraints]:
    """Every table gets the fused kernel and the requested sharding types that its module
    supports (unpooled collections have no table_row_wise); CAFE's hot table is kept whole
    per row (row_wise or table_wise) so its sketch shard owns whole rows."""
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
            requested = [t for t in requested if t in supported] or ["row_wise"]
        allowed = [t for t in requested if t in supported]
        if not allowed:
            raise ValueError(
                f"table '{name}': none of the sharding types {requested} applies; it takes {supported}"
            )
        out[name] = ParameterConstraints(sharding_types=allowed, compute_kernels=[FUSED])
    return out


DENSE_RESERVE = 0.15  # share of each rank's memory kept for dense parts, inputs, buffers


def make_topology(
    world_size: int,
    device_type: str,
    local_world_size: Optional[int] = None,
    hbm_bytes: Optional[int] = None,
    ddr_bytes: Optional[int] = None,
) -> Topology:
    return TopologyFactory.create_topology(
        trainer_config=PlannerTrainerConfig(
            world_size=world_size,
            local_world_size=local_world_size or world_size,
            hbm_cap_bytes=hbm_bytes,
            ddr_cap_bytes=ddr_bytes,
        ),
        kernel_config=KernelConfig(compute_device=device_type),
    )


def plan_model(
    model: nn.Module,
    env: DistEnv,
    types: Sequence[str],
    per_table: Dict[str, List[str]],
    sharders: List[ModuleSharder[nn.Module]],
) -> ShardingPlan:
    planner = EmbeddingShardingPlanner(
        topology=make_topology(env.world_size, env.device.type),
        constraints=table_constraints(model, types, per_table),
        storage_reservation=FixedPercentageStorageReservation(DENSE_RESERVE),
    )
    if dist.is_initialized():
        return planner.collective_plan(model, sharders, dist.GroupMember.WORLD)
    return planner.plan(model, sharders)


def shard_model(
    model: nn.Module,
    types: Sequence[str],
    per_table: Dict[str, List[str]],
    env: DistEnv,
) -> DistributedModelParallel:
    """Plan and wrap ``model``; its embedding parameters must carry their optimizer already."""
    from compactrec.sharding.cafe import attach_sharded_cafe

    sharders = default_sharders()
    plan = plan_model(model, env, types, per_table, sharders)
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
    )
    attach_sharded_cafe(dmp)  # CAFE's sketch: one shard per rank, beside its hot rows
    return dmp


def describe_plan(plan: ShardingPlan) -> List[Dict[str, object]]:
    """One row per table: module path, table, sharding type, kernel, ranks."""
    rows = []
    for path, module_plan in plan.plan.items():
        for table, ps in module_plan.items():  # type: ignore[union-attr]
            rows.append(
                {
                    "module": path,
                    "table": table,
                    "sharding_type": ps.sharding_type,
                    "kernel": ps.compute_kernel,
                    "ranks": list(ps.ranks or []),
                }
            )
    return rows


__all__ = ["shard_model", "plan_model", "describe_plan", "table_constraints"]
