"""The data set's self-description, ``DATA_DIR/_manifest.json``: features and splits.

The trainer builds its tables from the manifest (names, cardinalities, multi-hot or not,
dense columns), so Criteo, synthetic and other data sets run through the same code.

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
from typing import Any, Dict, List, Tuple

from compactrec.trainer.io import atomic_write_json

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

    def split_files(self, root: str | Path, split: str) -> List[str]:
        if split not in self.splits:
            raise KeyError(
                f"{Path(root) / MANIFEST_NAME}: no split '{split}' (has {sorted(self.splits)})"
            )
        return [str(Path(root) / f) for f in self.splits[split].files]


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
    return atomic_write_json(manifest_path(root), obj)


def read_manifest(root: str | Path) -> Manifest:
    """Raises ``FileNotFoundError``/``ValueError`` naming the manifest and the bad field."""
    path = manifest_path(root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no data manifest (generate data with `compactrec synth`)")
    try:
        obj = json.loads(path.read_text())
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
    return Manifest(schema=schema, splits=splits, stats=obj.get("stats", {}))
