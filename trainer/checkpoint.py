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
- ``meta.json``: step, epoch, data cursor, world size, config, and the run's fingerprint
  (``trainer/fingerprint.py``), compared with the resuming run before anything is loaded.
- ``manifest.json``: every file above with its size and blake2b digest
  (``trainer/checkpoint_manifest.py``), hashed by all ranks together after all have written.
- ``COMPLETE``: written last. A checkpoint is written under a temporary name and renamed
  when every rank has finished, so a crash leaves either the previous checkpoints or a
  ``.step_*.tmp`` folder that is ignored and cleaned up. Replacing a folder of the same step
  renames the old one aside (``.step_*.old``) before the new one takes its name, so a kill
  at any point leaves one complete version of that step.

Validity: ``problem(path)`` reads only JSON (``manifest.json``, ``meta.json``) and file
sizes and digests; a folder without our manifest, with a missing, short or changed file, is
skipped by ``latest_checkpoint`` with a warning naming the folder and the file, and the
previous valid checkpoint is used. Only a verified folder reaches the loader, and even then
DCP's index is unpickled by a restricted unpickler (``trainer/dcp_safe.py``): nothing in a
checkpoint folder runs code, except DeepSpeed's own files with ``dense.engine=deepspeed``
(docs/checkpoints.md says what a folder must be trusted for).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from compactrec.io import atomic_write_json, atomic_write_text
from compactrec.trainer.checkpoint_manifest import (
    MANIFEST,
    CheckpointError,
    deep_problems,
    digest_bytes,
    digest_file,
    hash_files,
    list_files,
    quick_problem,
    read_manifest,
    shares,
    write_manifest,
)
from compactrec.trainer.dcp_safe import METADATA, SafeLoadPlanner, VerifiedReader, safe_metadata

log = logging.getLogger(__name__)
PREFIX = "step_"
COMPLETE = "COMPLETE"
META = "meta.json"
_RNG = re.compile(r"rng_rank(\d+)\.pt")
__all__ = ["CheckpointError", "TrainState", "save_checkpoint", "load_checkpoint", "latest_checkpoint", "problem"]


@dataclass
class TrainState:
    step: int  # optimizer steps taken in the whole run
    epoch: int  # epoch to continue (or the next one, when ``cursor`` is None)
    cursor: Optional[Dict[str, Any]] = None  # the reader's position inside ``epoch``
    world_size: int = 1
    config: Dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    run_id: str = ""  # the launch that wrote it (trainer.run_id)
    fingerprint: Dict[str, Any] = field(default_factory=dict)  # trainer/fingerprint.py
    evals: List[Dict[str, Any]] = field(default_factory=list)  # every evaluation so far (trainer/best.py)
    best: Optional[Dict[str, Any]] = None  # the best of them (its weights in RUN_DIR/best/)


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _gather(obj: Any) -> List[Any]:
    from compactrec.sharding.env import all_gather_object

    return all_gather_object(obj)


def from_rank0(obj: Any) -> Any:
    """Collective: rank 0's ``obj`` on every rank (``obj`` itself without a process group)."""
    return _gather(obj if _rank() == 0 else None)[0]


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"{PREFIX}{step:09d}"


# ---- saving ----------------------------------------------------------------------------
def save_checkpoint(root: str | Path, engine, state: TrainState, keep: int = 2) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder."""
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the newest checkpoint must be kept (trainer.keep_checkpoints >= 1)")
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
        atomic_write_json(tmp / META, asdict(state))
    _write_manifest(tmp, state.step)
    if _rank() == 0:
        atomic_write_text(tmp / COMPLETE, f"{state.step}\n")
        _replace(tmp, final)
        prune(root, keep, final)
    _barrier()
    return final


def _write_manifest(folder: Path, step: int) -> None:
    """Collective: rank 0 lists the folder (after every rank wrote), every rank hashes its
    share of the bytes (``shares``: reading is what costs, and it is spread over the ranks'
    storage clients), rank 0 writes ``manifest.json`` from the gathered digests. Listing on
    one rank only: another node's view of shared storage may lag."""
    sizes = from_rank0(list_files(folder) if _rank() == 0 else None)
    mine = hash_files(folder, shares(sizes, _world())[_rank()])
    entries: Dict[str, Any] = {}
    for part in _gather(mine):
        entries.update(part)
    if _rank() == 0:
        write_manifest(folder, entries, step)


def _replace(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``; an existing ``final`` is renamed aside first and deleted
    only once the new one is in place (``prune`` puts an orphaned ``.old`` back)."""
    if not final.exists():
        tmp.rename(final)
        return
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


# ---- validity --------------------------------------------------------------------------
_VERIFIED: Dict[str, str] = {}  # folder -> digest of the manifest.json whose files all matched


def _content_check(folder: Path, files: Dict[str, Any]):
    """Checks of a file's content once its digest matches, none of which runs code from it."""

    def check(name: str, path: Path) -> Optional[str]:
        if name == METADATA:
            try:
                md = safe_metadata(path.read_bytes())
                for info in (md.storage_data or {}).values():
                    rel = info.relative_path
                    if rel not in files or int(info.offset) + int(info.length) > files[rel]["size"]:
                        return f"points at {rel!r} bytes {info.offset}+{info.length}, which {MANIFEST} does not list"
            except Exception as e:  # refused globals, a garbled pickle, fields of the wrong type
                return f"not a DCP index: {e}"
        elif _RNG.fullmatch(name):
            try:
                t = torch.load(path, weights_only=True)
            except Exception as e:  # weights_only refuses anything but tensors and plain containers
                lines = [line.strip() for line in str(e).splitlines()]
                why = next((line for line in lines if "Unsupported global" in line), type(e).__name__)
                return f"not an RNG state (torch.load(weights_only=True) refused it: {why})"
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8:
                return f"not an RNG state (a {type(t).__name__})"
        elif name == META:
            try:
                meta = json.loads(path.read_text())
                _state(meta)
            except (ValueError, CheckpointError) as e:
                return f"not CompactRec's meta.json ({e})"
        return None

    return check


def _quick(folder: Path) -> Tuple[Dict[str, Any], Optional[str]]:
    """The manifest and the first problem found without reading data (None: none)."""
    files = read_manifest(folder)
    if not (folder / COMPLETE).is_file():
        return files, f"no {COMPLETE} marker (the writer did not finish)"
    return files, quick_problem(folder, files, required=(METADATA, META))


def problem(path: str | Path, collective: bool = False) -> Optional[str]:
    """Why the checkpoint at ``path`` cannot be used, naming the file; None when it can.

    Reads only JSON, sizes and digests (and, for files whose digest matches, DCP's index
    with the restricted unpickler and RNG states ``weights_only``). ``collective``: every
    rank calls it and each hashes a share of the bytes; all get the same answer.
    """
    folder = Path(path)
    rank, world = (_rank(), _world()) if collective else (0, 1)
    mine: Optional[str] = None
    key = ""
    try:
        files, mine = _quick(folder)
        if mine is None:
            key = digest_file(folder / MANIFEST)
            if _VERIFIED.get(str(folder.resolve())) != key:
                sizes = {n: e["size"] for n, e in files.items()}
                found = deep_problems(folder, files, shares(sizes, world)[rank], _content_check(folder, files))
                mine = "; ".join(found) if found else None
    except CheckpointError as e:
        mine = str(e)
    except OSError as e:
        mine = f"unreadable ({e})"
    if collective and world > 1:
        mine = "; ".join(dict.fromkeys(p for p in _gather(mine) if p)) or None  # each reason once
    if mine is None:
        _VERIFIED[str(folder.resolve())] = key
    return mine


def is_valid(path: str | Path) -> bool:
    """``problem(path) is None`` (this rank alone hashes every file)."""
    return problem(path) is None


def _quick_ok(path: Path) -> bool:
    try:
        return _quick(path)[1] is None
    except (CheckpointError, OSError):
        return False


def _step_name(p: Path) -> str:
    name = p.name
    return name[1:-4] if name.startswith(".") and name.endswith(".old") else name


def checkpoints(root: str | Path) -> List[Path]:
    """Checkpoint folders under ``root``, newest first (valid or not), with any
    ``.step_*.old`` whose ``step_*`` is missing (a replace that was killed half-way)."""
    root = Path(root)
    if not root.is_dir():
        return []
    finals = {p.name for p in root.iterdir() if p.is_dir() and p.name.startswith(PREFIX)}
    found = [root / n for n in finals]
    found += [p for p in root.glob(f".{PREFIX}*.old") if p.is_dir() and _step_name(p) not in finals]
    return sorted(found, key=_step_name, reverse=True)


def _run_id(path: Path) -> Optional[str]:
    try:
        return json.loads((path / META).read_text()).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None


def find_checkpoint(
    root: str | Path, run_id: Optional[str] = None, collective: bool = False
) -> Tuple[Optional[Path], List[str]]:
    """The newest usable checkpoint under ``root`` (of launch ``run_id`` if given) and the
    reasons the newer ones were skipped (each naming its folder and file, also warned)."""
    skipped: List[str] = []
    candidates = [p for p in checkpoints(root) if run_id is None or _run_id(p) == run_id]  # JSON only
    if collective:  # one list for all ranks: another node's view of shared storage may lag
        candidates = from_rank0(candidates)
    for path in candidates:
        why = problem(path, collective)
        if why is None:
            return path, skipped
        skipped.append(f"{path}: {why}")
        log.warning("skipping checkpoint %s: %s", path, why)
        if not collective or _rank() == 0:
            print(f"compactrec: warning: skipping checkpoint {path}: {why}", flush=True)
    return None, skipped


def latest_checkpoint(root: str | Path, run_id: Optional[str] = None, collective: bool = False) -> Optional[Path]:
    """The newest usable checkpoint (see ``find_checkpoint``), or None."""
    return find_checkpoint(root, run_id, collective)[0]


def prune(root: Path, keep: int, newest: Path) -> None:
    """After ``newest`` was written: keep it and the ``keep - 1`` checkpoints before it that
    look complete (manifest, marker and sizes: no data is read); drop older ones and stale
    temp folders; put back a ``.old`` folder whose replacement never arrived. Folders of
    later steps are left alone: a run resumed from an older checkpoint (the newest was
    damaged, or a planted folder has a higher step) must not delete its own newest."""
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the newest checkpoint must be kept (trainer.keep_checkpoints >= 1)")
    root = Path(root)
    for old in root.glob(f".{PREFIX}*.old"):
        final = root / _step_name(old)
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.rename(final)
    older = [p for p in checkpoints(root) if _step_name(p) < newest.name and _quick_ok(p)]
    for p in older[keep - 1 :]:
        shutil.rmtree(p, ignore_errors=True)
    for p in root.glob(f".{PREFIX}*.tmp"):
        shutil.rmtree(p, ignore_errors=True)  # prune runs after the rename: no save is in flight


# ---- loading ---------------------------------------------------------------------------
def _state(meta: Any) -> TrainState:
    names = {f.name for f in fields(TrainState)}
    if not isinstance(meta, dict) or type(meta.get("step")) is not int or type(meta.get("epoch")) is not int:
        raise CheckpointError("meta.json has no integer step and epoch")
    return TrainState(**{k: v for k, v in meta.items() if k in names})


def _metadata_check(folder: Path, files: Dict[str, Any]):
    def check(data: bytes) -> None:
        want = files[METADATA]
        if len(data) != want["size"] or digest_bytes(data) != want["digest"]:
            raise CheckpointError(f"{folder / METADATA}: changed since it was verified (checksum mismatch)")

    return check


def _dcp_reason(e: BaseException) -> str:
    """The first rank's own error out of DCP's ``CheckpointException`` ("Missing key ...",
    "Size mismatch ...", a refused unpickle), in one line."""
    failures = getattr(e, "failures", None)
    if isinstance(failures, dict) and failures:
        rank, wrapped = sorted(failures.items())[0]
        inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped
        first = next((line for line in str(inner).splitlines() if line.strip()), "")
        return f"rank {rank}: {type(inner).__name__}: {first[:300]}"
    first = next((line for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {first[:300]}"


def load_checkpoint(
    path: str | Path,
    engine,
    fingerprint: Optional[Dict[str, Any]] = None,
    allow_changes: Sequence[str] = (),
) -> TrainState:
    """Collective: verify the folder (every file against ``manifest.json``), compare the
    saved run's fingerprint with ``fingerprint`` (the current run's; keys in
    ``allow_changes`` may differ), then restore the model and both optimizers through the
    dense engine (tables resharded to the current plan) and the rank's RNG state (when the
    world size matches); returns the saved ``TrainState``.

    Raises:
        CheckpointError: naming the folder and the file or the settings that differ.
    """
    path = Path(path)
    why = problem(path, collective=True)
    if why is not None:
        raise CheckpointError(f"{path}: not a usable checkpoint: {why}")
    files = read_manifest(path)
    state = _state(json.loads((path / META).read_text()))
    if fingerprint is not None:
        from compactrec.trainer.fingerprint import check_resume

        changed = check_resume(state.fingerprint, fingerprint, allow_changes, str(path))
        if changed and _rank() == 0:
            print(f"compactrec: resuming {path} with changed settings (trainer.resume_changes): {changed}", flush=True)
    payload = engine.state_dict()
    try:
        dcp.load(payload, storage_reader=VerifiedReader(path, _metadata_check(path, files)), planner=SafeLoadPlanner())
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # DCP's per-rank wrapper derives from BaseException
        raise CheckpointError(f"{path}: its tensors do not fit this model ({_dcp_reason(e)})") from e
    engine.load_state_dict(payload)
    engine.load_files(path)
    from compactrec.sharding.cafe import after_load

    after_load(engine.model)  # CAFE: re-home hot ids whose slots moved to another rank
    rng = f"rng_rank{_rank()}.pt"
    if state.world_size == _world() and rng in files:
        torch.set_rng_state(torch.load(path / rng, weights_only=True))  # verified above
    return state
