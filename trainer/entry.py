"""The per-worker entry point: the same function runs under Ray Train and the local launcher.

Ray Train (or ``compactrec.sharding.env.spawn``) has initialized the process group before
this runs; this reads the rank's environment, finds the checkpoint to resume from (this
launch's newest one after a worker failure, or ``trainer.resume_from``), trains, and under
Ray reports metrics and where each checkpoint lies (Ray keeps no copy of it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

from compactrec.logs import quiet_third_party

quiet_third_party()  # before torchrec / fbgemm are imported: they log at import time

import torch  # noqa: E402

from compactrec.sharding.env import current_env  # noqa: E402
from compactrec.trainer.checkpoint import META, CheckpointError, find_checkpoint, from_rank0, problem  # noqa: E402
from compactrec.trainer.config import RunConfig, config_from_dict  # noqa: E402
from compactrec.trainer.host_malloc import keep_freed_memory  # noqa: E402
from compactrec.trainer.loop import checkpoint_root, train  # noqa: E402


def _under_ray() -> bool:
    try:
        import ray.train

        ray.train.get_context().get_world_size()
        return True
    except Exception:
        return False


def _is_one_checkpoint(path: Path) -> bool:
    """``path`` is a checkpoint folder itself (not a folder of them)."""
    return any((path / name).exists() for name in ("manifest.json", META, ".metadata"))


def resume_path(cfg: RunConfig) -> Optional[Path]:
    """``trainer.resume_from``: a checkpoint folder, a folder of them, or ``latest`` (the
    newest valid one in this launch's folder, which ``start_launch`` made the newest launch's,
    if any). Broken checkpoints are skipped with a warning. Collective: every rank calls it,
    and they share the hashing."""
    spec = cfg.trainer.resume_from
    if not spec:
        return None
    if spec == "latest":
        return find_checkpoint(checkpoint_root(cfg), collective=True)[0]
    path = Path(spec)
    if from_rank0(_is_one_checkpoint(path)):  # every rank takes the same branch of collectives
        why = problem(path, collective=True)
        if why is not None:
            raise CheckpointError(f"trainer.resume_from={spec}: not a usable checkpoint: {why}")
        return path
    found, skipped = find_checkpoint(path, collective=True)
    if found is None:
        why = f" ({'; '.join(skipped)})" if skipped else ""
        raise FileNotFoundError(f"trainer.resume_from={spec}: no complete checkpoint there{why}")
    return found


def worker_main(config: Dict[str, Any]) -> Dict[str, Any]:
    """Train one rank; ``config`` is ``config_to_dict(RunConfig)`` (plain, picklable)."""
    quiet_third_party()
    cfg = config_from_dict(config)
    if cfg.cluster.keep_freed_memory:
        keep_freed_memory()
    if cfg.cluster.torch_threads > 0:
        torch.set_num_threads(cfg.cluster.torch_threads)
    env = current_env(cfg.trainer.device)
    if not _under_ray():
        from tqdm import tqdm

        return train(cfg, env, progress=tqdm, resume=resume_path(cfg))

    import ray.train
    from ray.experimental.tqdm_ray import tqdm as progress

    def report_checkpoint(path: Path, info: Dict[str, Any]) -> None:
        # Ray is told where our checkpoint is, not handed a copy: a Checkpoint object would
        # make Ray copy every table into its storage too (2x the disk). Every rank reports.
        ray.train.report({**info, "checkpoint_path": str(path)})

    # A restarted worker group resumes from the newest verified checkpoint of this launch (its
    # own folder), else from trainer.resume_from.
    own = find_checkpoint(checkpoint_root(cfg), cfg.trainer.run_id, collective=True)[0] if cfg.trainer.run_id else None
    resume = own or resume_path(cfg)
    try:
        metrics = train(cfg, env, progress=progress, resume=resume, on_checkpoint=report_checkpoint)
    except Exception as e:  # Ray reports errors per rank: say where (cluster/fault_message.py)
        where = getattr(e, "compactrec_where", None)
        if where is None:
            raise
        first = next((line for line in str(e).splitlines() if line.strip()), "")
        raise RuntimeError(f"{where}: {type(e).__name__}: {first}") from e
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str))})
    return metrics


def spawned_worker(rank: int, world_size: int, config: Dict[str, Any]) -> None:
    """Target for ``compactrec.sharding.env.spawn`` (local launcher)."""
    worker_main(config)
