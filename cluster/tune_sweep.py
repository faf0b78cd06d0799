"""A sweep's points as Ray Tune trials, each trial one Ray Train run.

``tune.Tuner`` over a grid of point indices; a trial is a small driver function (it reserves
a hundredth of a CPU) that runs the point exactly as ``compactrec train`` would: its
``TorchTrainer`` asks Ray for the point's workers. Tune starts as many trials at once as the
cluster's resources hold (``concurrent_trials``): on a 64-CPU cluster, 32 points of 2
one-CPU workers run side by side; on a 2-core laptop they run one after another. A trial
that fails (a worker error) does not stop the others; its error is returned for its row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

from compactrec.trainer.config import RunConfig, config_from_dict, config_to_dict

# The trial function only waits on its TorchTrainer, but Tune refuses a trial of no
# resources: a hundredth of a CPU. `concurrent_trials` leaves it out (a hundred drivers fit
# in one spare CPU, e.g. the head's); a local cluster for a sweep gets one CPU more.
TRIAL_DRIVER_CPU = 0.01


def trial_resources(run: RunConfig) -> Dict[str, float]:
    """What one point's Ray Train workers take from the cluster."""
    c = run.cluster
    need = {"CPU": float(c.num_workers * c.cpus_per_worker)}
    if c.use_gpu:
        need["GPU"] = float(c.num_workers)
    return need


def concurrent_trials(cluster: Mapping[str, float], runs: Sequence[RunConfig]) -> int:
    """How many points fit on ``cluster`` (``ray.cluster_resources()``) at once, sized by the
    largest point; at least 1 (a point larger than the cluster then fails in Ray Train's own
    resource check rather than waiting here forever)."""
    fits = []
    for run in runs:
        need = trial_resources(run)
        fits.append(min(math.floor(cluster.get(k, 0.0) / v) for k, v in need.items() if v > 0))
    return max(1, min(fits)) if fits else 1


def _trial(config: Dict[str, Any], runs: List[Dict[str, Any]]) -> None:
    """One Tune trial: train point ``config["point"]`` and report its final scalars."""
    from ray import tune

    from compactrec.cluster.run import run_training

    metrics = run_training(config_from_dict(runs[config["point"]]))
    tune.report({k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)})


def run_on_tune(runs: Sequence[RunConfig], sweep_dir: Path) -> Dict[int, str]:
    """Train every run as a Tune trial (Ray must be initialized); returns the error text of
    each run that failed, by index. Tune's own state goes to ``sweep_dir/tune``."""
    import os

    import ray
    from ray import tune

    # Tune's newer console output prints an experiment box and paths even at verbose=0; the
    # legacy reporter at verbose=0 prints nothing (the sweep prints its own table at the end).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    trainable = tune.with_resources(
        tune.with_parameters(_trial, runs=[config_to_dict(r) for r in runs]), {"CPU": TRIAL_DRIVER_CPU}
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"point": tune.grid_search(list(range(len(runs))))},
        tune_config=tune.TuneConfig(max_concurrent_trials=concurrent_trials(ray.cluster_resources(), runs)),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(Path(sweep_dir).resolve()), verbose=0,
            failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
        ),
    )
    errors: Dict[int, str] = {}
    for result in tuner.fit():
        if result.error is not None:
            errors[int(result.config["point"])] = _last_line(result.error)
    return errors


def _last_line(e: BaseException) -> str:
    """The innermost message of a trial error (Ray wraps the worker's exception)."""
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else type(e).__name__
