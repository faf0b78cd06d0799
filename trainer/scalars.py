"""Where a run's scalars go: TensorBoard (``trainer.tensorboard``) and MLflow (``mlflow.enabled``).

``scalar_writer`` returns one object with TensorBoard's ``add_scalar(tag, value, step)`` /
``close()`` that writes to each enabled sink, or None; rank 0 only. MLflow goes through Ray's
integration, ``ray.air.integrations.mlflow.setup_mlflow`` (experiment, run name, params from
the config, rank-zero handling), and is an optional extra: ``mlflow`` is imported only when
enabled, and a missing install is an error before any worker starts (``check_mlflow``).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Dict, List, Optional

from compactrec.trainer.config import ConfigError, RunConfig, config_to_dict

INSTALL = "pip install 'compactrec[mlflow]' (or pip install mlflow)"


def check_mlflow(cfg: RunConfig) -> None:
    """With ``mlflow.enabled``, MLflow must be importable here.

    Raises:
        ConfigError: naming the key and the install command.
    """
    if not cfg.mlflow.enabled:
        return
    try:
        importlib.import_module("mlflow")
    except ImportError:
        raise ConfigError(f"mlflow.enabled=true needs MLflow, an optional extra that is not installed: {INSTALL}") from None


class _MlflowScalars:
    """TensorBoard's ``add_scalar`` API over an MLflow run started by Ray's ``setup_mlflow``."""

    def __init__(self, cfg: RunConfig) -> None:
        from ray.air.integrations.mlflow import setup_mlflow

        m = cfg.mlflow
        self.mlflow = setup_mlflow(
            config=_flat(config_to_dict(cfg)),
            tracking_uri=m.tracking_uri or None,
            experiment_name=m.experiment,
            run_name=f"{cfg.name}/{cfg.trainer.run_id}" if cfg.trainer.run_id else cfg.name,
            create_experiment_if_not_exists=True,
            tags={"compactrec.method": cfg.embedding.kind, **m.tags},
            rank_zero_only=False,  # the caller is rank 0 already (also outside Ray Train)
        )

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        self.mlflow.log_metric(tag.replace("@", "_at_"), float(value), step=step)  # '@' is not a valid MLflow key

    def close(self) -> None:
        self.mlflow.end_run()


class _Fanout:
    def __init__(self, sinks: List[Any]) -> None:
        self.sinks = sinks

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        for s in self.sinks:
            s.add_scalar(tag, value, step)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def scalar_writer(cfg: RunConfig, is_main: bool, out: Path) -> Optional[_Fanout]:
    """The run's scalar sinks on rank 0 (TensorBoard in ``out/tb``, MLflow), else None."""
    if not is_main:
        return None
    sinks: List[Any] = []
    if cfg.trainer.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        sinks.append(SummaryWriter(str(out / "tb")))
    if cfg.mlflow.enabled:
        check_mlflow(cfg)
        sinks.append(_MlflowScalars(cfg))
    return _Fanout(sinks) if sinks else None


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    """Nested config -> dotted keys (MLflow params are flat)."""
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
