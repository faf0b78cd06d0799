"""One folder per launch, so that runs never clobber each other.

    runs_dir/<name>/<launch>/      metrics.json, config.yaml, log.txt, tb/, checkpoints/, ray/
    runs_dir/<name>/latest   ->    <launch> (a relative symlink to the newest launch)

``<launch>`` is ``YYYYmmdd-HHMMSS-xxxx`` (local time, then 4 random hex digits), so folders
sort by start time and two launches in the same second still differ. The launch id is
``trainer.run_id``: the driver picks it once (``start_launch``) before any worker starts,
so restarted workers, the local launcher's retries and a job submitted to a cluster all
write to the same folder. ``trainer.resume_from=latest`` continues the newest launch in
its own folder instead of starting a new one.

A sweep launch is one id shared by its points: ``runs/demo/<launch>/results.md`` and
``runs/demo/kind=full/<launch>/metrics.json``.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from compactrec.trainer.config import RunConfig

LATEST = "latest"


def run_dir(cfg: RunConfig) -> Path:
    """The launch's folder; ``runs_dir/name`` itself when no launch id is set (a direct
    ``train()`` call, as in unit tests)."""
    root = Path(cfg.runs_dir) / cfg.name
    return root / cfg.trainer.run_id if cfg.trainer.run_id else root


def new_launch_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)


def latest_launch(runs_dir: str, name: str) -> Optional[str]:
    """The launch id that ``runs_dir/name/latest`` points at, if it is there."""
    link = Path(runs_dir) / name / LATEST
    return link.resolve().name if link.is_dir() else None


def start_launch(cfg: RunConfig) -> RunConfig:
    """``cfg`` with its launch id set, its folder made and ``latest`` pointing at it.

    A preset ``trainer.run_id`` is kept (a sweep's points, a job whose submitter chose it);
    ``trainer.resume_from=latest`` reuses the newest launch; otherwise a new id."""
    run_id = cfg.trainer.run_id
    if not run_id and cfg.trainer.resume_from == "latest":
        run_id = latest_launch(cfg.runs_dir, cfg.name) or ""
    run_id = run_id or new_launch_id()
    cfg = replace(cfg, trainer=replace(cfg.trainer, run_id=run_id))
    run_dir(cfg).mkdir(parents=True, exist_ok=True)
    point_latest(Path(cfg.runs_dir) / cfg.name, run_id)
    return cfg


def point_latest(root: Path, launch: str) -> None:
    """Make ``root/latest`` a relative symlink to ``root/launch``, atomically (a reader sees
    the old or the new target, never no link)."""
    tmp = root / f".{LATEST}.{os.getpid()}.{secrets.token_hex(2)}"
    try:
        os.symlink(launch, tmp)
        os.replace(tmp, root / LATEST)
    except OSError as e:  # a filesystem without symlinks: the stamped folders are still apart
        if os.path.lexists(tmp):
            os.unlink(tmp)
        print(f"compactrec: warning: cannot point {root / LATEST} at {launch}: {e}", flush=True)
