"""Run the trainer without Ray: in this process (1 worker) or in spawned gloo ranks.

For debugging and tests; Ray Train (``ray_launcher``) is the default launcher.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Dict

from compactrec.sharding.env import close_process_group, free_port, init_process_group, spawn
from compactrec.trainer.config import RunConfig, config_to_dict
from compactrec.trainer.entry import spawned_worker, worker_main
from compactrec.trainer.run_folder import run_dir, start_launch


def run_local(cfg: RunConfig) -> Dict[str, Any]:
    if not cfg.trainer.run_id:  # called without run_training: still one folder per launch
        cfg = start_launch(cfg)
    config = config_to_dict(cfg)
    n = cfg.cluster.num_workers
    if n == 1:
        init_process_group(0, 1, free_port())
        try:
            return worker_main(config)
        finally:
            close_process_group()
    for attempt in range(cfg.trainer.max_failures + 1):
        try:
            spawn(spawned_worker, n, config)
            break
        except Exception as e:  # a rank died: start again from the latest checkpoint
            if attempt == cfg.trainer.max_failures:
                raise
            print(f"compactrec: a worker failed ({type(e).__name__}); restarting from the latest checkpoint", flush=True)
            config = config_to_dict(replace(cfg, trainer=replace(cfg.trainer, resume_from="latest")))
    return json.loads((run_dir(cfg) / "metrics.json").read_text())
