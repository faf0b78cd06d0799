"""Run the trainer on Ray Train workers: ``TorchTrainer`` over ``worker_main``.

Orchestration only: each worker builds, shards and trains its model; this starts the
workers (a local Ray cluster, or ``cluster.address``) and collects rank 0's metrics.
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from typing import Any, Dict, Iterator

from compactrec.cluster.fault_message import describe_failure
from compactrec.cluster.ray_address import cluster_address
from compactrec.trainer.config import RunConfig, config_to_dict
from compactrec.trainer.entry import worker_main
from compactrec.trainer.run_folder import run_dir, start_launch


# Without the dashboard, Ray Train's placement-group cleaner warns every few seconds that
# the state API is unavailable; workers log FBGEMM's library loads at INFO. Both levels
# apply to attached clusters too (they are the driver's and its job's logging).
_QUIET: Dict[str, Any] = {"logging_level": logging.WARNING}


@contextmanager
def ray_session(cfg: RunConfig, extra_cpus: int = 0) -> Iterator[None]:
    """``ray.init`` for the run, then shutdown: attach to the cluster that is there (inside
    ``ray job submit``, beside a running ``ray start --head``, or ``cluster.address``) with
    no resources given, else start a local cluster sized for the run (``ray_address.py``)
    plus ``extra_cpus`` (a sweep's Tune trial drivers)."""
    import ray

    _QUIET.setdefault("logging_config", ray.LoggingConfig(encoding="TEXT", log_level="ERROR"))
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no ~/.ray/auth_token for local runs
    if ray.is_initialized():
        yield
        return
    address = cluster_address(cfg.cluster.address)
    if address:
        print(f"compactrec: attaching to the Ray cluster at {address}", flush=True)
        try:
            ray.init(address=address, log_to_driver=True, **_QUIET)
        except ConnectionError as e:  # "auto" with no cluster, a wrong host:port
            raise RuntimeError(f"cluster.address={address}: no Ray cluster there ({e}); "
                               "cluster.address=local starts one here") from None
    else:
        ray.init(address="local", **local_cluster_resources(cfg, extra_cpus), log_to_driver=True, **_QUIET)
    try:
        yield
    finally:
        ray.shutdown()


def local_cluster_resources(cfg: RunConfig, extra_cpus: int = 0) -> Dict[str, Any]:
    """``ray.init`` arguments of a new local cluster: CPUs for every worker even on a
    smaller machine (they time-share), no GPUs unless asked, no dashboard."""
    need = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
    return {
        "num_cpus": max(need, os.cpu_count() or 1) + extra_cpus,
        "num_gpus": None if cfg.cluster.use_gpu else 0,
        "include_dashboard": False,
    }


def run_ray(cfg: RunConfig) -> Dict[str, Any]:
    """One training run on ``cluster.num_workers`` Ray Train workers; returns its metrics."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from compactrec.sharding.env import backend_for

    if not cfg.trainer.run_id:  # called without run_training: still one folder per launch
        cfg = start_launch(cfg)
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
        run_config=ray_run_config(cfg),
    )
    with ray_session(cfg):
        try:
            trainer.fit()
        except Exception as e:  # Ray wraps worker errors; surface the worker's own message
            raise RuntimeError(f"training failed on Ray workers: {describe_failure(e)}") from e
    return json.loads((run_dir(cfg) / "metrics.json").read_text())


def ray_run_config(cfg: RunConfig) -> Any:
    """Ray Train's run config: its own state (a few small JSON files) in the launch folder,
    ``RUN_DIR/ray``. Checkpoints are never handed to Ray (``entry.worker_main`` reports their
    paths), so each one is on disk once, in ``RUN_DIR/checkpoints``."""
    from ray.train import FailureConfig
    from ray.train import RunConfig as RayRunConfig

    return RayRunConfig(
        name="ray",
        storage_path=str(run_dir(cfg).resolve()),
        failure_config=FailureConfig(max_failures=cfg.trainer.max_failures),
    )

