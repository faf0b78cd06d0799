"""The per-worker entry point: the same function runs under Ray Train and the local launcher.

Ray Train (or ``compactrec.sharding.env.spawn``) has initialized the process group before
this runs; this reads the rank's environment, trains, and reports to Ray when under Ray.
"""

from __future__ import annotations

from typing import Any, Dict

from compactrec.logs import quiet_third_party

quiet_third_party()  # before torchrec / fbgemm are imported: they log at import time

import torch  # noqa: E402
from compactrec.sharding.env import current_env  # noqa: E402
from compactrec.trainer.config import config_from_dict  # noqa: E402
from compactrec.trainer.loop import train  # noqa: E402


def _under_ray() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_size()
        return True
    except Exception:
        return False


def worker_main(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train one rank; ``config`` is ``config_to_dict(RunConfig)`` (plain, picklable)."""
    quiet_third_party()
    cfg = config_from_dict(config)
    if cfg.cluster.torch_threads > 0:
        torch.set_num_threads(cfg.cluster.torch_threads)
    env = current_env(cfg.trainer.device)
    ray_mode = _under_ray()
    if ray_mode:
        from ray.experimental.tqdm_ray import tqdm as progress
    else:
        from tqdm import tqdm as progress
    metrics = train(cfg, env, progress=progress)
    if ray_mode:
        import ray.train

        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    return metrics


def spawned_worker(rank: int, world_size: int, config: Dict[str, Any]) -> None:
    """Target for ``compactrec.sharding.env.spawn`` (local launcher)."""
    worker_main(config)
