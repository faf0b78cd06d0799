"""What a resumed run must share with the run that saved the checkpoint.

A checkpoint's weights mean something only under the settings that trained them: the
method, its ratio and sizes, the hash functions and seeds (with another seed every learned
row is reached by other ids: the load "works" and the model is garbage), the dense model,
the optimizers, and the data. ``run_fingerprint`` records those settings in ``meta.json``
at save time; ``check_resume`` compares them with the current run before anything is
loaded and refuses with every key that differs.

Not compared (a resume may change them): where the run writes (``name``, ``runs_dir``,
``trainer.checkpoint_*``), the cluster (``cluster.*``: DCP reshards to another world
size), the sharding plan (``sharding.*``), the per-rank batch size (the reader re-deals
the unread rows), reading policies (``data.validate``, ``data.on_bad_file``, prefetch),
logging, and evaluation (``data.eval_*``, ``ranking.*``). The data set is compared by
identity (a digest of its ``_manifest.json``), not by path: moved data resumes, other
data with the same layout does not.

``trainer.resume_changes=[key, section, ...]`` lets the listed keys (or every key under a
listed section) differ on purpose: more epochs (``trainer.epochs``), another learning rate
(``optim.dense_lr``), new data after a finished epoch (``data.identity``). Settings that
change the tables' shapes still cannot load and fail with a clear error naming the folder.
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence

from compactrec.trainer.checkpoint_manifest import CheckpointError
from compactrec.trainer.config import RunConfig, config_to_dict

SECTIONS = ("model", "embedding", "compression", "optim", "dense")
KEYS = ("data.train_split", "data.dense_transform", "data.shuffle", "trainer.seed", "trainer.epochs", "trainer.max_steps")
DATA_IDENTITY = "data.identity"
INFO = ("data.path",)  # recorded for messages, not compared


def _flatten(node: Any, prefix: str, out: Dict[str, Any]) -> None:
    if isinstance(node, dict) and node:
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}", out)
    else:
        out[prefix] = node


def run_fingerprint(cfg: RunConfig, data_digest: str) -> Dict[str, Any]:
    """Dotted key -> value of every compared setting, plus ``data.identity`` (the data
    manifest's digest) and ``data.path`` (for messages)."""
    d = config_to_dict(cfg)
    # Only the active method's knobs (and DeepSpeed's with that engine): a resume may
    # change the settings of a method it does not use.
    d["embedding"] = {k: v for k, v in d["embedding"].items() if not isinstance(v, dict) or k == cfg.embedding.kind}
    if cfg.dense.engine != "deepspeed":
        d["dense"] = {k: v for k, v in d["dense"].items() if k != "deepspeed"}
    out: Dict[str, Any] = {}
    for section in SECTIONS:
        _flatten(d[section], section, out)
    for key in KEYS:
        section, name = key.split(".")
        out[key] = d[section][name]
    out[DATA_IDENTITY] = data_digest
    out["data.path"] = cfg.data.path
    return out


def differences(saved: Dict[str, Any], current: Dict[str, Any]) -> Dict[str, tuple]:
    """Compared keys whose values differ: key -> (saved, current); a key missing on one
    side (another CompactRec version's schema) counts as a difference."""
    missing = object()
    out: Dict[str, tuple] = {}
    for key in sorted(set(saved) | set(current)):
        if key in INFO:
            continue
        a, b = saved.get(key, missing), current.get(key, missing)
        if a != b:
            out[key] = (None if a is missing else a, None if b is missing else b)
    return out


def _allowed(key: str, allow: Sequence[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in allow)


def check_resume(saved: Dict[str, Any], current: Dict[str, Any], allow: Sequence[str], where: str) -> List[str]:
    """Refuse to resume ``where`` (a checkpoint folder) when a compared setting differs and
    is not in ``allow`` (``trainer.resume_changes``); returns the allowed differences.

    Raises:
        CheckpointError: naming the folder and each differing key with both values.
    """
    known = set(current) - set(INFO)
    stray = [a for a in allow if not any(k == a or k.startswith(a + ".") for k in known)]
    if stray:
        raise CheckpointError(
            f"trainer.resume_changes names {stray}, which resume does not compare "
            f"(compared: sections {list(SECTIONS)}, keys {[*KEYS, DATA_IDENTITY]})"
        )
    diff = differences(saved, current)
    refused = {k: v for k, v in diff.items() if not _allowed(k, allow)}
    if refused:
        lines = []
        for key, (a, b) in refused.items():
            if key == DATA_IDENTITY:
                lines.append(
                    f"{key}: other data (manifest digest {str(a)[:12]} at {saved.get('data.path')!r}, "
                    f"now {str(b)[:12]} at {current.get('data.path')!r})"
                )
            else:
                lines.append(f"{key}: checkpoint {a!r}, now {b!r}")
        raise CheckpointError(
            f"{where}: saved by a run with other settings, refusing to resume: " + "; ".join(lines)
            + f". To resume anyway where that is meaningful, set trainer.resume_changes=[{','.join(refused)}]"
        )
    return sorted(diff)
