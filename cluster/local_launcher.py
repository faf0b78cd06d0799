"""Run the trainer without Ray: in this process (1 worker) or in spawned ranks (gloo on the
CPU, nccl on CUDA: ``sharding.env.backend_for``).

For debugging and tests; Ray Train (``ray_launcher``) is the default launcher.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Dict

from compactrec.sharding.env import backend_for, close_process_group, free_port, init_process_group, spawn
from compactrec.trainer.config import RunConfig, config_to_dict
from compactrec.trainer.entry import spawned_worker, worker_main
from compactrec.trainer.run_folder import run_dir, start_launch


def run_local(cfg: RunConfig) -> Dict[str, Any]:
    if not cfg.trainer.run_id:  # called without run_training: still one folder per launch
        cfg = start_launch(cfg)
    config = config_to_dict(cfg)
    n = cfg.cluster.num_workers
    backend = backend_for(cfg.trainer.device)
    if n == 1:
        init_process_group(0, 1, free_port(), backend)
        try:
            return worker_main(config)
        finally:
            close_process_group()
    for attempt in range(cfg.trainer.max_failures + 1):
        try:
            spawn(spawned_worker, n, config, backend=backend)
            break
        except Exception as e:  # a rank died: start again from the latest checkpoint
            if attempt == cfg.trainer.max_failures:
                raise
            first = next((line for line in str(e).splitlines() if line.strip()), "")
            print(f"compactrec: a worker failed ({type(e).__name__}: {first}); restarting from the latest checkpoint", flush=True)
            config = config_to_dict(replace(cfg, trainer=replace(cfg.trainer, resume_from="latest")))
    return json.loads((run_dir(cfg) / "metrics.json").read_text())
