"""Budgets that reach what users ask: constant features dropped, small features compressed
when the ratio needs it, one wording of every method's reachable maximum, and a clear error
for a table too large to train."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
from compactrec.embeddings.budget import BudgetError
from compactrec.embeddings.factory import TableSizeError, build_embeddings
from compactrec.trainer.config import CompressionConfig, load_config
from compactrec.trainer.features import trainable_schema

META = torch.device("meta")


def _schema(*cards: int) -> FeatureSchema:
    return FeatureSchema("label", ("int_0",), tuple(SparseFeature(f"cat_{i}", c) for i, c in enumerate(cards)))


def _counts(schema: FeatureSchema):
    g = np.random.default_rng(0)
    return lambda: {f.name: g.zipf(1.2, f.cardinality).astype(np.int64) for f in schema.sparse}


def test_constant_features_are_dropped_with_a_line_naming_them():
    said = []
    schema = trainable_schema(_schema(1000, 1, 50, 1), said.append)
    assert schema.sparse_names == ["cat_0", "cat_2"] and schema.dense == ("int_0",)
    assert len(said) == 1 and "cat_1, cat_3" in said[0]
    assert trainable_schema(_schema(5, 6), said.append).sparse_names == ["cat_0", "cat_1"] and len(said) == 1
    with pytest.raises(ValueError, match="every sparse feature is constant"):
        trainable_schema(_schema(1, 1))


def test_small_features_are_compressed_when_the_ratio_needs_it(capsys):
    # 20 features of 150 ids (kept whole by small_field_rows=200: 3000 rows) and one of 4000:
    # 10x leaves 700 rows, fewer than the small features alone, so they must be compressed too.
    schema = _schema(*([150] * 20), 4000)
    cfg = load_config(None, ["embedding.kind=hash"]).embedding
    emb = build_embeddings(cfg, CompressionConfig(ratio=10), schema, 16, META)
    achieved = full_embedding_bytes(schema, 16) / module_bytes(emb)
    assert 10 <= achieved <= 10.5
    assert "small features compressed too" in capsys.readouterr().out
    # at 2x they fit whole, as before
    emb = build_embeddings(cfg, CompressionConfig(ratio=2), schema, 16, META)
    assert "compressed too" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["qr", "memcom", "mixed_dim", "cafe"])
def test_every_method_states_its_reachable_maximum_in_the_same_words(kind: str):
    schema = _schema(5000, 3000, 800, 120, 40)
    cfg = load_config(None, [f"embedding.kind={kind}"]).embedding
    with pytest.raises(BudgetError) as e:
        build_embeddings(cfg, CompressionConfig(ratio=5000), schema, 16, META, counts=_counts(schema))
    found = re.search(rf"^{kind} cannot reach 5000x .* {kind} reaches at most (\d+\.\d)x here$", str(e.value))
    assert found, str(e.value)
    best = float(found.group(1))
    assert 1 < best < 5000
    # any maximum the method's own reason states is the same one (both with small features
    # compressed): a reason from the build that kept them whole said a smaller number
    stated = [float(x) for x in re.findall(r"(\d+\.\d)x at most|at most (\d+\.\d)x", str(e.value)) for x in x if x]
    assert all(abs(x - best) <= 0.15 * best for x in stated), str(e.value)
    emb = build_embeddings(cfg, CompressionConfig(ratio=best * 0.98), schema, 16, META, counts=_counts(schema))
    assert full_embedding_bytes(schema, 16) / module_bytes(emb) >= best * 0.98  # the stated maximum is reachable
    with pytest.raises(BudgetError):  # and a little more is not
        build_embeddings(cfg, CompressionConfig(ratio=best * 1.1), schema, 16, META, counts=_counts(schema))


def test_a_table_of_raw_ids_is_refused_before_training_naming_the_feature():
    schema = _schema(1000, 2**32 + 1)  # raw Criteo hex values + 1
    cfg = load_config(None, ["embedding.kind=full"]).embedding
    with pytest.raises(TableSizeError, match=r"feature cat_1: table .* 4,294,967,297 rows .*embedding.max_table_rows"):
        build_embeddings(cfg, CompressionConfig(), schema, 16, META)
    hashed = load_config(None, ["embedding.kind=hash"]).embedding  # a hashing method is fine with raw ids
    build_embeddings(hashed, CompressionConfig(ratio=1e6), schema, 16, META)
    small_cap = load_config(None, ["embedding.kind=full", "embedding.max_table_rows=999"]).embedding
    with pytest.raises(TableSizeError, match="feature cat_0"):
        build_embeddings(small_cap, CompressionConfig(), _schema(1000), 16, META)
