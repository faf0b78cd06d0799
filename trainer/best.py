"""Evaluations during training and the best of them.

Every evaluation (after each epoch with ``trainer.eval_every_epoch``, every
``trainer.eval_every_steps`` steps, and the final one) becomes an entry of
``TrainState.evals`` (saved in checkpoints, so a resumed run keeps its history) and of
``metrics.json``'s ``evals`` list: ``{"epoch", "step", "end_of_epoch", "auc", "logloss", "ne"}``
(``epoch``: the 1-based epoch it was taken in). The best entry by ``trainer.best_metric``
(auc: higher; logloss, ne: lower; the earlier one on a tie) is ``TrainState.best``, and with
``trainer.keep_best`` its weights are a complete checkpoint in ``RUN_DIR/best/step_*/``
(one kept), loadable like any other (``trainer.resume_from=RUN_DIR/best``).

Example::

    entry = eval_entry(metrics, epoch=2, step=640, end_of_epoch=True)
    if is_better(entry, state.best, "auc"): ...
"""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

CTR_KEYS = ("auc", "logloss", "ne")
HIGHER_IS_BETTER = {"auc": True, "logloss": False, "ne": False}
BEST_DIR = "best"


def eval_entry(metrics: Dict[str, Any], epoch: int, step: int, end_of_epoch: bool) -> Dict[str, Any]:
    return {"epoch": epoch, "step": step, "end_of_epoch": end_of_epoch,
            **{k: float(metrics[k]) for k in CTR_KEYS if k in metrics}}


def is_better(entry: Dict[str, Any], best: Optional[Dict[str, Any]], metric: str) -> bool:
    """``entry`` beats ``best`` (None: anything with a finite metric beats it)."""
    value = entry.get(metric, float("nan"))
    if not math.isfinite(value):
        return False
    if best is None or not math.isfinite(best.get(metric, float("nan"))):
        return True
    return value > best[metric] if HIGHER_IS_BETTER[metric] else value < best[metric]
