"""The baseline: one full table per sparse feature, TorchRec's ``EmbeddingBagCollection``.

Example::

    ebc = build_full(schema, dim=16)            # tables t_cat_0 ... t_cat_25
    kt = ebc(kjt)                               # KeyedTensor, values (B, 26 * 16)
"""

from __future__ import annotations

from typing import List

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from compactrec.data.reader.manifest import FeatureSchema
from compactrec.embeddings.base import table_device


def table_name(feature: str) -> str:
    return f"t_{feature}"


def full_tables(schema: FeatureSchema, dim: int, pooling: PoolingType = PoolingType.SUM) -> List[EmbeddingBagConfig]:
    return [
        EmbeddingBagConfig(
            name=table_name(f.name),
            embedding_dim=dim,
            num_embeddings=f.cardinality,
            feature_names=[f.name],
            pooling=pooling,
        )
        for f in schema.sparse
    ]


def build_full(schema: FeatureSchema, dim: int, device: torch.device | None = None) -> EmbeddingBagCollection:
    return EmbeddingBagCollection(tables=full_tables(schema, dim), device=table_device(device))
