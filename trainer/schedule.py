"""Learning-rate schedule: linear warmup, then a decay, as a factor of the configured lr.

``optim.warmup_steps`` W, ``optim.decay`` (none | linear | cosine), ``optim.decay_steps`` D
(0: until the run's last step) and ``optim.min_lr_ratio`` r give the factor at step s
(0-based, counted over the whole run)::

    s < W:        (s + 1) / W
    decay none:   1
    linear:       1 - (1 - r) * t            t = min(1, (s - W) / max(1, D - W)), D default: total - 1
    cosine:       r + (1 - r) * (1 + cos(pi t)) / 2

The loop multiplies every param group's configured lr by it before each step: the dense
optimizer's and the tables' fused optimizer's (TorchRec's ``EmbeddingFusedOptimizer`` hands
``param_groups[0]["lr"]`` to FBGEMM in ``zero_grad()`` / ``step()``, and FBGEMM's lookup takes
it in the forward for the update inside backward: the loop calls ``zero_grad`` before the
forward, so the tables follow the schedule at the same step as the dense part; a test shows it).

Example::

    lr_factor(cfg.optim, step=0, total_steps=1000)   # 1 / warmup_steps with a warmup
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from compactrec.trainer.config import OptimConfig


def lr_factor(cfg: OptimConfig, step: int, total_steps: int) -> float:
    """The lr multiplier at 0-based ``step`` of a run of ``total_steps`` steps."""
    w = cfg.warmup_steps
    if step < w:
        return (step + 1) / w
    if cfg.decay == "none":
        return 1.0
    end = cfg.decay_steps if cfg.decay_steps > 0 else total_steps - 1  # the last step (0-based)
    t = min(1.0, max(0, step - w) / max(1, end - w))
    r = cfg.min_lr_ratio
    if cfg.decay == "linear":
        return 1.0 - (1.0 - r) * t
    return r + (1.0 - r) * (1.0 + math.cos(math.pi * t)) / 2.0


def is_constant(cfg: OptimConfig) -> bool:
    return cfg.warmup_steps == 0 and cfg.decay == "none"


class LrScheduler:
    """Sets ``base_lr * factor`` on every param group of ``optimizers`` (base taken at build)."""

    def __init__(self, cfg: OptimConfig, optimizers: List[Any], total_steps: int) -> None:
        self.cfg, self.total = cfg, total_steps
        self.groups: List[Dict[str, Any]] = [g for opt in optimizers for g in opt.param_groups]
        self.base = [float(g["lr"]) for g in self.groups]

    def set_step(self, step: int) -> float:
        """Apply the factor of ``step``; returns the dense lr now (the first group's)."""
        f = lr_factor(self.cfg, step, self.total)
        for g, base in zip(self.groups, self.base):
            g["lr"] = base * f
        return self.base[0] * f if self.base else 0.0
