"""The data set's self-description, ``DATA_DIR/_manifest.json``: features and splits.

The trainer builds its tables from the manifest (names, cardinalities, multi-hot or not,
dense columns), so Criteo, synthetic and other data sets run through the same code. The
data root may be a local folder or a URI (``s3://``, ``gs://``, ``hdfs://``, ``file://``):
file paths in the manifest are relative to it and joined with ``/`` (``fs.py``).
``stats`` is free-form: the synthetic generator records the Bayes AUC, ``compactrec convert
criteo`` per-column statistics, distinct-count estimates, the id map and malformed lines.

Example manifest (abridged)::

    {"format": "compactrec-data/1", "label": "label", "dense": ["int_0", ...],
     "sparse": [{"name": "cat_0", "cardinality": 40000, "multi_hot": false}, ...],
     "splits": {"train": {"files": ["train/part-00000.parquet"], "rows": 160000}},
     "stats": {"bayes_auc": {"eval": 0.79}}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from compactrec.data.reader import fs
from compactrec.io import atomic_write_json

MANIFEST_NAME = "_manifest.json"
FORMAT = "compactrec-data/1"


@dataclass(frozen=True)
class SparseFeature:
    name: str
    cardinality: int
    multi_hot: bool = False


@dataclass(frozen=True)
class FeatureSchema:
    """Column layout of one data set."""

    label: str
    dense: Tuple[str, ...]
    sparse: Tuple[SparseFeature, ...]

    @property
    def sparse_names(self) -> List[str]:
        return [f.name for f in self.sparse]

    @property
    def cardinalities(self) -> List[int]:
        return [f.cardinality for f in self.sparse]


@dataclass
class SplitInfo:
    files: List[str]  # relative to the data folder
    rows: int


@dataclass
class Manifest:
    schema: FeatureSchema
    splits: Dict[str, SplitInfo]
    stats: Dict[str, Any] = field(default_factory=dict)
    ranking: Optional[Dict[str, Any]] = None  # user/item side tables (data/datasets/side_tables.py)
    digest: str = ""  # sha256 of the manifest's canonical JSON (set by read_manifest): the data's identity

    def split_files(self, root: str | Path, split: str) -> List[str]:
        """The split's shards as paths under ``root`` (a local folder or a URI)."""
        if split not in self.splits:
            raise KeyError(
                f"{fs.join(root, MANIFEST_NAME)}: no split '{split}' (has {sorted(self.splits)})"
            )
        return [fs.join(root, f) for f in self.splits[split].files]


def manifest_path(root: str | Path) -> Path:
    return Path(root) / MANIFEST_NAME


def write_manifest(root: str | Path, manifest: Manifest) -> Path:
    s = manifest.schema
    obj = {
        "format": FORMAT,
        "label": s.label,
        "dense": list(s.dense),
        "sparse": [asdict(f) for f in s.sparse],
        "splits": {k: asdict(v) for k, v in manifest.splits.items()},
        "stats": manifest.stats,
    }
    if manifest.ranking is not None:
        obj["ranking"] = manifest.ranking
    return atomic_write_json(manifest_path(root), obj)


def _bad(path: str, where: str, value: Any, expected: str) -> ValueError:
    return ValueError(f"{path}: malformed manifest: {where} is {value!r} (a {type(value).__name__}); expected {expected}")


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _schema(obj: Dict[str, Any], path: str) -> FeatureSchema:
    """Every field of the feature layout checked for its type (a cardinality written as a
    string would otherwise surface as a bare TypeError deep in the model builder)."""
    if not isinstance(obj.get("label"), str):
        raise _bad(path, "'label'", obj.get("label"), "a column name")
    dense = obj.get("dense")
    if not isinstance(dense, list) or not all(isinstance(d, str) for d in dense):
        raise _bad(path, "'dense'", dense, "a list of column names")
    sparse = obj.get("sparse")
    if not isinstance(sparse, list):
        raise _bad(path, "'sparse'", sparse, "a list of features")
    features = []
    for i, f in enumerate(sparse):
        if not isinstance(f, dict) or set(f) - {"name", "cardinality", "multi_hot"} or "name" not in f:
            raise _bad(path, f"sparse[{i}]", f, "{name, cardinality, multi_hot}")
        where = f"sparse[{i}] ({f['name']!r})"
        if not isinstance(f["name"], str):
            raise _bad(path, f"{where} name", f["name"], "a column name")
        if not _int(f.get("cardinality")) or f["cardinality"] < 1:
            raise _bad(path, f"{where} cardinality", f.get("cardinality"), "an integer >= 1")
        if not isinstance(f.get("multi_hot", False), bool):
            raise _bad(path, f"{where} multi_hot", f["multi_hot"], "true or false")
        features.append(SparseFeature(**f))
    return FeatureSchema(label=obj["label"], dense=tuple(dense), sparse=tuple(features))


def _splits(obj: Dict[str, Any], path: str) -> Dict[str, SplitInfo]:
    splits = obj.get("splits")
    if not isinstance(splits, dict):
        raise _bad(path, "'splits'", splits, "an object of split name -> {files, rows}")
    out = {}
    for name, v in splits.items():
        if not isinstance(v, dict) or set(v) != {"files", "rows"}:
            raise _bad(path, f"split '{name}'", v, "{files, rows}")
        if not isinstance(v["files"], list) or not all(isinstance(f, str) for f in v["files"]):
            raise _bad(path, f"split '{name}' files", v["files"], "a list of paths")
        if not _int(v["rows"]) or v["rows"] < 0:
            raise _bad(path, f"split '{name}' rows", v["rows"], "an integer >= 0")
        out[name] = SplitInfo(files=v["files"], rows=v["rows"])
    return out


def manifest_digest(obj: Any) -> str:
    """sha256 of the manifest's canonical JSON: the same for a copy of the data anywhere."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_manifest(root: str | Path) -> Manifest:
    """Read ``root/_manifest.json`` (``root`` a local folder or a URI such as ``s3://b/d``).

    Raises ``FileNotFoundError``/``ValueError`` naming the manifest and the bad field.
    """
    path = fs.join(root, MANIFEST_NAME)
    if not fs.exists(path):
        raise FileNotFoundError(
            f"{path}: no data manifest (generate data with `compactrec synth` or `compactrec convert criteo`)"
        )
    try:
        obj = json.loads(fs.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: malformed manifest: not JSON ({e})") from None
    if not isinstance(obj, dict):
        raise _bad(path, "the manifest", obj, "a JSON object")
    if obj.get("format") != FORMAT:
        raise ValueError(f"{path}: malformed manifest: format is {obj.get('format')!r}, expected {FORMAT!r}")
    schema = _schema(obj, path)
    splits = _splits(obj, path)
    stats, ranking = obj.get("stats", {}), obj.get("ranking")
    if not isinstance(stats, dict):
        raise _bad(path, "'stats'", stats, "an object")
    if ranking is not None and not isinstance(ranking, dict):
        raise _bad(path, "'ranking'", ranking, "an object")
    return Manifest(schema=schema, splits=splits, stats=stats, ranking=ranking, digest=manifest_digest(obj))
