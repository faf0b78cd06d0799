"""Run the trainer on Ray Train workers: ``TorchTrainer`` over ``worker_main``.

Orchestration only: each worker builds, shards and trains its model; this starts the
workers (a local Ray cluster, or ``cluster.address``) and collects rank 0's metrics.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator

from compactrec.cluster.fault_message import describe_failure
from compactrec.trainer.config import RunConfig, config_to_dict
from compactrec.trainer.entry import worker_main
from compactrec.trainer.loop import run_dir


# Without the dashboard, Ray Train's placement-group cleaner warns every few seconds that
# the state API is unavailable; workers log FBGEMM's library loads at INFO.
_QUIET: Dict[str, Any] = {"logging_level": logging.WARNING}


@contextmanager
def ray_session(cfg: RunConfig) -> Iterator[None]:
    """``ray.init`` for the run (a local cluster unless ``cluster.address``), then shutdown."""
    import ray

    _QUIET.setdefault("logging_config", ray.LoggingConfig(encoding="TEXT", log_level="ERROR"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token for local runs
    if ray.is_initialized():
        yield
        return
    if cfg.cluster.address:
        ray.init(address=cfg.cluster.address, log_to_driver=True, **_QUIET)
    else:
        need = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
        ray.init(
            num_cpus=max(need, os.cpu_count() or 1),
            num_gpus=None if cfg.cluster.use_gpu else 0,
            include_dashboard=False,
            log_to_driver=True,
            **_QUIET,
        )
    try:
        yield
    finally:
        ray.shutdown()


def run_ray(cfg: RunConfig) -> Dict[str, Any]:
    """One training run on ``cluster.num_workers`` Ray Train workers; returns its metrics."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from compactrec.sharding.env import backend_for

    cfg = replace(cfg, trainer=replace(cfg.trainer, run_id=cfg.trainer.run_id or uuid.uuid4().hex))
    storage = Path(cfg.runs_dir).resolve() / "_ray"
    trainer = TorchTrainer(
        worker_main,
        train_loop_config=config_to_dict(cfg),
        # the workers' process group follows their device (nccl on GPU workers, gloo on CPU)
        torch_config=TorchConfig(backend=backend_for("cuda" if cfg.cluster.use_gpu else "cpu")),
        scaling_config=ScalingConfig(
            num_workers=cfg.cluster.num_workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker},
        ),
        run_config=RayRunConfig(
            name=cfg.name.replace("/", "__"),
            storage_path=str(storage),
            failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=max(1, cfg.trainer.keep_checkpoints)),
        ),
    )
    with ray_session(cfg):
        try:
            trainer.fit()
        except Exception as e:  # Ray wraps worker errors; surface the worker's own message
            raise RuntimeError(f"training failed on Ray workers: {describe_failure(e)}") from e
    return json.loads((run_dir(cfg) / "metrics.json").read_text())
