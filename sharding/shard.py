"""Apply TorchRec model parallelism to a single-device model in one call.

``model = shard_model(train_model, types, per_table, env)`` plans every embedding table
(``sharding/planner.py``) and wraps the model in ``DistributedModelParallel``: tables are
sharded (FBGEMM fused kernels, the optimizer applied in backward), the dense part is wrapped
in DDP (or left to the dense engine with ``data_parallel=False``), and CAFE's sketch is split
over the ranks beside its hot rows (``sharding/cafe.py``); reserved rows of
``reserve_unseen`` are zeroed (``embeddings/reserved.py``).
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.types import ShardingEnv

from compactrec.embeddings.reserved import zero_reserved_rows
from compactrec.sharding.cafe import attach_sharded_cafe
from compactrec.sharding.env import DistEnv
from compactrec.sharding.planner import default_sharders, plan_model


def shard_model(
    model: nn.Module,
    types: Sequence[str],
    per_table: Dict[str, List[str]],
    env: DistEnv,
    data_parallel: bool = True,
    batch_size: int = 0,
) -> DistributedModelParallel:
    """Plan and wrap ``model``; its embedding parameters must carry their optimizer already.

    ``data_parallel=False``: DMP does not wrap the dense part in DDP (it stays a plain module
    on the device it was built on) because another engine synchronizes it
    (``dense.engine=deepspeed``, ``trainer/dense_engine.py``). ``batch_size``: the per-rank
    batch the planner costs (the job's ``data.batch_size``; 0: the planner's default). Ranks
    per host come from the job (``planner.local_world_size_of_job``).
    """
    sharders = default_sharders()
    # the device's memory caps the plan (TorchRec's default would assume its own figure)
    hbm = torch.cuda.get_device_properties(env.device).total_memory if env.device.type == "cuda" else None
    plan = plan_model(model, env.world_size, env.device.type, types, per_table, sharders,
                      hbm_bytes=hbm, batch_size=batch_size)
    dmp = DistributedModelParallel(
        module=model,
        env=ShardingEnv.from_process_group(dist.GroupMember.WORLD),
        device=env.device,
        plan=plan,
        sharders=sharders,
        init_data_parallel=data_parallel,  # False: no DDP wrapper (and no DDP buckets)
    )
    if not data_parallel:
        dmp.module.to(env.device)  # what DDP's wrapping does for the unsharded modules
    finish_sharding(dmp)
    return dmp


def finish_sharding(dmp: nn.Module) -> None:
    """What DMP's own init does not know about: CAFE's sketch split over the ranks beside
    its hot rows (collective), and ``reserve_unseen``'s reserved rows back at 0 (TorchRec
    initialised them at random with the rest of their tables; local writes only)."""
    attach_sharded_cafe(dmp)
    zero_reserved_rows(dmp)
