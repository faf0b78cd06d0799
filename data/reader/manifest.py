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
        if obj.get("format") != FORMAT:
            raise ValueError(f"format is {obj.get('format')!r}, expected {FORMAT!r}")
        schema = FeatureSchema(
            label=obj["label"],
            dense=tuple(obj["dense"]),
            sparse=tuple(SparseFeature(**f) for f in obj["sparse"]),
        )
        splits = {k: SplitInfo(**v) for k, v in obj["splits"].items()}
    except (KeyError, TypeError, json.JSONDecodeError, ValueError) as e:
        raise ValueError(f"{path}: malformed manifest: {e!r}") from None
    for f in schema.sparse:
        if f.cardinality < 1:
            raise ValueError(f"{path}: feature {f.name} has cardinality {f.cardinality} < 1")
    return Manifest(schema=schema, splits=splits, stats=obj.get("stats", {}), ranking=obj.get("ranking"))
