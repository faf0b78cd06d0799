"""Save / load a rank's part of a sharded state with ``torch.distributed.checkpoint`` (DCP).

Every rank calls both (they are collectives). A state is a nested dict of tensors and plain
values: ``ShardedTensor`` / ``DTensor`` entries (TorchRec's tables and their fused optimizer
state) are written by the rank that owns each shard; plain tensors count as replicated and
are written once. Loading is in place: DCP copies into the tensors of the state passed in,
so build that state from the live model / optimizer, load, then hand it back to them.

Example::

    save_state({"model": dmp.state_dict()}, "ckpt/step_100/dcp")
    state = {"model": dmp.state_dict()}
    load_state(state, "ckpt/step_100/dcp")
    dmp.load_state_dict(state["model"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import torch.distributed.checkpoint as dcp


def save_state(state: Dict[str, Any], path: str | Path) -> None:
    """Write ``state`` under the folder ``path`` (one file per rank plus metadata)."""
    dcp.save(state, checkpoint_id=str(path))


def load_state(state: Dict[str, Any], path: str | Path) -> None:
    """Fill ``state`` (same keys and shapes as saved) in place from the folder ``path``."""
    if not (Path(path) / ".metadata").exists():
        raise FileNotFoundError(f"{path}: no torch.distributed.checkpoint here (.metadata missing)")
    dcp.load(state, checkpoint_id=str(path))
