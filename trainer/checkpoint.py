"""Checkpoints: sharded model + optimizer state, data cursor, step, RNG states and config.

Layout of one checkpoint, ``ROOT/step_000001200/``:

- ``.metadata`` + ``__*.distcp``: ``torch.distributed.checkpoint`` (DCP) of the dense
  engine's ``state_dict()`` (``trainer/dense_engine.py``), ``{"model": ..., "optim": ...}``:
  every rank writes its shards (tables, fused optimizer state, CAFE's sketch shard); on load
  DCP reshards into the new plan, so a run saved on 2 ranks resumes on 1 and vice versa.
  Only tensors go in (optimizer param groups are not saved: they come from the config).
- ``deepspeed/`` (``dense.engine=deepspeed`` only): DeepSpeed's own checkpoint of the dense
  part (weights, ZeRO optimizer partitions per rank); the DCP part then holds only the
  tables and their optimizer. ZeRO files do not reshard: resume on the same number of ranks.
- ``rng_rank{r}.pt``: rank r's torch RNG state, loaded with ``weights_only=True``.
- ``meta.json``: step, epoch, data cursor, world size, config.
- ``COMPLETE``: written last. A checkpoint is written under a temporary name and renamed
  when every rank has finished, so a crash leaves either the previous checkpoints or a
  ``.step_*.tmp`` folder that is ignored and cleaned up; a folder without ``COMPLETE`` or with
  unreadable metadata is skipped with a warning naming it.

Nothing is unpickled on load except DCP's own metadata (no arbitrary objects).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from compactrec.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
PREFIX = "step_"
COMPLETE = "COMPLETE"


@dataclass
class TrainState:
    step: int  # optimizer steps taken in the whole run
    epoch: int  # epoch to continue (or the next one, when ``cursor`` is None)
    cursor: Optional[Dict[str, Any]] = None  # the reader's position inside ``epoch``
    world_size: int = 1
    config: Dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    run_id: str = ""  # the launch that wrote it (trainer.run_id)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:09d}"


def save_checkpoint(root: str | Path, engine, state: TrainState, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    root = Path(root)
    final = step_dir(root, state.step)
    tmp = root / f".{final.name}.tmp"
    if _rank() == 0:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dcp.save(engine.state_dict(), checkpoint_id=str(tmp))
    engine.save_files(tmp)  # DeepSpeed: tmp/deepspeed/
    torch.save(torch.get_rng_state(), tmp / f"rng_rank{_rank()}.pt")
    _barrier()
    if _rank() == 0:
        atomic_write_json(tmp / "meta.json", asdict(state))
        atomic_write_text(tmp / COMPLETE, f"{state.step}\n")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        prune(root, keep)
    _barrier()
    return final


def is_valid(path: Path) -> bool:
    """A finished, intact checkpoint: the marker is there, meta.json parses, DCP's metadata
    reads, and every data file it points to is long enough for the bytes it should hold
    (a truncated file is found here, not in the middle of a load)."""
    try:
        json.loads((Path(path) / "meta.json").read_text())
        if not (Path(path) / COMPLETE).exists():
            return False
        metadata = dcp.FileSystemReader(str(path)).read_metadata()
        need: Dict[str, int] = {}
        for info in (metadata.storage_data or {}).values():
            need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
        return all((Path(path) / name).stat().st_size >= size for name, size in need.items())
    except Exception:  # unreadable metadata of any kind means: not a usable checkpoint
        return False


def checkpoints(root: str | Path) -> List[Path]:
    """Checkpoint folders under ``root``, newest first (valid or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)), reverse=True)


def latest_checkpoint(root: str | Path, run_id: Optional[str] = None) -> Optional[Path]:
    """The newest valid checkpoint (of launch ``run_id`` if given); broken ones are skipped
    with a warning naming them."""
    for path in checkpoints(root):
        if is_valid(path):
            if run_id is None or json.loads((path / "meta.json").read_text()).get("run_id") == run_id:
                return path
            continue
        log.warning("skipping checkpoint %s: incomplete or corrupt (no COMPLETE marker or unreadable metadata)", path)
        print(f"compactrec: warning: skipping checkpoint {path}: incomplete or corrupt", flush=True)
    return None


def prune(root: Path, keep: int) -> None:
    """Keep the newest ``keep`` valid checkpoints; drop older ones and stale temp folders."""
    valid = [p for p in checkpoints(root) if is_valid(p)]
    for p in valid[keep:]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{PREFIX}*.tmp"):
        if not valid or p.name != f".{valid[0].name}.tmp":
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path: str | Path, engine) -> TrainState:
    """Collective: restore the model and both optimizers through the dense engine (tables
    resharded to the current plan) and the rank's RNG state (when the world size matches);
    returns the saved ``TrainState``."""
    path = Path(path)
    if not is_valid(path):
        raise ValueError(f"{path}: not a complete checkpoint (missing {COMPLETE}, meta.json or .metadata)")
    payload = engine.state_dict()
    dcp.load(payload, checkpoint_id=str(path))
    engine.load_state_dict(payload)
    engine.load_files(path)
    from compactrec.sharding.cafe import after_load

    after_load(engine.model)  # CAFE: re-home hot ids whose slots moved to another rank
    meta = json.loads((path / "meta.json").read_text())
    state = TrainState(**meta)
    rng = path / f"rng_rank{_rank()}.pt"
    if state.world_size == (dist.get_world_size() if dist.is_initialized() else 1) and rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True))
    return state
