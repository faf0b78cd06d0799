"""Start one training run from the driver: resolve paths, make or check the data, launch.

Orchestration only (no training logic): the workers build, shard and train the model.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Dict

from compactrec.trainer.config import RunConfig


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """Local paths resolved against the caller's directory (Ray workers run elsewhere);
    URIs (s3://, gs://, hdfs://, file://) pass unchanged."""

    def resolve(p: str) -> str:
        return p if "://" in p else str(Path(p).resolve())

    return replace(cfg, data=replace(cfg.data, path=resolve(cfg.data.path)), runs_dir=resolve(cfg.runs_dir))


def ensure_data(cfg: RunConfig) -> None:
    """Generate the synthetic data set when the config asks for it and it is absent."""
    from compactrec.data.reader.manifest import manifest_path

    if "://" in cfg.data.path or manifest_path(cfg.data.path).exists() or not cfg.data.synthesize_if_missing:
        return
    from compactrec.data.datasets.synthetic import generate

    print(f"compactrec: generating synthetic data in {cfg.data.path}", flush=True)
    generate(cfg.synth, cfg.data.path)


def check_data(cfg: RunConfig) -> None:
    """Fail in the driver, before any worker starts, if the data set is not usable."""
    from compactrec.data.reader.manifest import read_manifest

    manifest = read_manifest(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        for path in manifest.split_files(cfg.data.path, split):
            if "://" not in path and not Path(path).exists():
                raise FileNotFoundError(f"{path}: listed in the manifest but missing")


def run_training(cfg: RunConfig) -> Dict[str, Any]:
    """Train ``cfg`` with its launcher in a folder of its own (``trainer/run_folder.py``),
    its output kept whole in RUN_DIR/log.txt (``compactrec/run_log.py``); returns rank 0's
    metrics, with ``run_dir``."""
    from compactrec.run_log import RunLog
    from compactrec.trainer.run_folder import run_dir, start_launch

    from compactrec.trainer.scalars import check_mlflow

    cfg = absolute_paths(cfg)
    check_mlflow(cfg)  # an optional extra asked for but missing: say so before any work
    ensure_data(cfg)
    check_data(cfg)
    cfg = start_launch(cfg)
    with RunLog(run_dir(cfg) / "log.txt"):
        print(f"compactrec: {cfg.name}: launch {cfg.trainer.run_id} in {run_dir(cfg)}", flush=True)
        if cfg.trainer.launcher == "local":
            from compactrec.cluster.local_launcher import run_local

            metrics = run_local(cfg)
        else:
            from compactrec.cluster.ray_launcher import run_ray

            metrics = run_ray(cfg)
    return {**metrics, "run_dir": str(run_dir(cfg))}
