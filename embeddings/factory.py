"""``embedding.kind`` -> the embedding module (KeyedJaggedTensor in, KeyedTensor out)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from compactrec.embeddings.full import build_full
from compactrec.trainer.config import CompressionConfig, EmbeddingConfig
from compactrec.trainer.data.manifest import FeatureSchema


def build_embeddings(
    cfg: EmbeddingConfig,
    compression: CompressionConfig,
    schema: FeatureSchema,
    dim: int,
    device: Optional[torch.device] = None,
) -> nn.Module:
    """Build the configured method over ``schema``'s sparse features, all of width ``dim``."""
    if cfg.kind == "full":  # the baseline ignores `compression`, so sweeps can include it
        return build_full(schema, dim, device)
    raise NotImplementedError(f"embedding.kind={cfg.kind!r} is not built yet")
