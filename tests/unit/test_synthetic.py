"""Synthetic data: Criteo schema, scaled cardinalities, Zipf skew, planted labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from compactrec.trainer.config import SynthConfig
from compactrec.data.convert import criteo
from compactrec.data.reader.manifest import read_manifest
from compactrec.data.datasets.synthetic import Teacher, synthetic_cardinalities
from compactrec.trainer.metrics import auc
from tests.conftest import make_data


def test_schema_and_dtypes(tiny_data: Path):
    m = read_manifest(tiny_data)
    table = pq.read_table(tiny_data / m.splits["train"].files[0])
    types = {f.name: f.type for f in table.schema}
    assert types["label"] == pa.int8() and types["p_true"] == pa.float32()
    assert all(types[f"int_{i}"] == pa.float32() for i in range(13))
    assert all(types[f"cat_{i}"] == pa.int64() for i in range(26))
    assert m.splits["train"].rows == 4096
    assert sum(pq.ParquetFile(tiny_data / f).metadata.num_rows for f in m.splits["train"].files) == 4096


def test_cardinalities_follow_criteo_scaled():
    cfg = SynthConfig(scale=1e-3, min_cardinality=16)
    cards = synthetic_cardinalities(cfg)
    assert cards[0] == 40_000 and cards[5] == 3 and cards[12] == 10  # big scaled, small kept
    assert len(cards) == criteo.NUM_SPARSE


def test_ids_in_range_and_zipf_skewed():
    teacher = Teacher(SynthConfig(scale=1e-3))
    ids = teacher.sample_ids(0, np.random.default_rng(0), 200_000)
    assert ids.min() >= 0 and ids.max() < teacher.cards[0]
    counts = np.sort(np.bincount(ids, minlength=teacher.cards[0]))[::-1]
    top1pct = counts[: len(counts) // 100].sum() / counts.sum()
    assert top1pct > 0.3, top1pct  # power law: 1% of ids carry a large share of traffic


def test_deterministic(tmp_path: Path):
    a = make_data(tmp_path / "a", rows_train=600, rows_eval=300)
    b = make_data(tmp_path / "b", rows_train=600, rows_eval=300)
    for split in ("train", "eval"):
        for f in read_manifest(a).splits[split].files:
            assert pq.read_table(a / f).equals(pq.read_table(b / f))


def test_bayes_auc_is_reported_and_labels_follow_the_teacher(tiny_data: Path):
    m = read_manifest(tiny_data)
    table = pq.read_table(tiny_data / m.splits["eval"].files[0])
    y = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    p = torch.from_numpy(table.column("p_true").to_numpy())
    assert abs(m.stats["bayes_auc"]["eval"] - auc(y, p)) < 1e-6
    assert 0.65 < m.stats["bayes_auc"]["eval"] < 0.95
    assert abs(float(y.float().mean()) - float(p.mean())) < 0.05  # labels drawn from p_true


def test_multi_hot_columns_are_lists(tiny_multihot_data: Path):
    m = read_manifest(tiny_multihot_data)
    multi = [f for f in m.schema.sparse if f.multi_hot]
    assert [f.name for f in multi] == ["cat_23", "cat_24", "cat_25"]
    table = pq.read_table(tiny_multihot_data / m.splits["train"].files[0], columns=["cat_25"])
    lengths = pa.compute.list_value_length(table.column("cat_25")).to_numpy()
    assert lengths.min() >= 1 and lengths.max() <= 4 and lengths.max() > 1
