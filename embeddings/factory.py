"""``embedding.kind`` -> the embedding module (KeyedJaggedTensor in, KeyedTensor out).

Sizes come from the method's own sub-config when given (``embedding.hash.rows``, ...), else
from ``compression`` (a ratio or a byte budget) through the method's planner.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from compactrec.embeddings.budget import budget_bytes
from compactrec.embeddings.full import build_full
from compactrec.embeddings.mixed_dim import CountsFn
from compactrec.trainer.config import CompressionConfig, EmbeddingConfig
from compactrec.data.reader.manifest import FeatureSchema


def _budget(compression: CompressionConfig, schema: FeatureSchema, dim: int) -> Optional[int]:
    if compression.ratio is None and compression.bytes is None:
        return None
    return budget_bytes(compression, schema, dim)


def build_embeddings(
    cfg: EmbeddingConfig,
    compression: CompressionConfig,
    schema: FeatureSchema,
    dim: int,
    device: Optional[torch.device] = None,
    counts: Optional[CountsFn] = None,
) -> nn.Module:
    """Build the configured method over ``schema``'s sparse features, all of width ``dim``.

    ``counts`` lazily returns id frequencies of a training sample (needed by mixed_dim rows).
    Raises ``BudgetError`` when the method cannot meet the requested compression.
    """
    if cfg.kind == "full":  # the baseline ignores `compression`, so sweeps can include it
        return build_full(schema, dim, device)
    budget = _budget(compression, schema, dim)
    small = cfg.small_field_rows
    if cfg.kind == "hash":
        from compactrec.embeddings.hashing_trick import build_hash

        return build_hash(schema, dim, cfg.hash, small, budget, device)
    if cfg.kind == "qr":
        from compactrec.embeddings.qr import build_qr

        return build_qr(schema, dim, cfg.qr, small, budget, device)
    if cfg.kind == "memcom":
        from compactrec.embeddings.memcom import build_memcom

        return build_memcom(schema, dim, cfg.memcom, small, budget, device)
    if cfg.kind == "mixed_dim":
        from compactrec.embeddings.mixed_dim import build_mixed_dim

        return build_mixed_dim(schema, dim, cfg.mixed_dim, small, budget, counts, device)
    if cfg.kind == "cafe":
        from compactrec.embeddings.cafe import build_cafe

        return build_cafe(schema, dim, cfg.cafe, small, budget, device)
    raise ValueError(f"unknown embedding.kind {cfg.kind!r}")
