"""Byte accounting: what a method keeps for training and inference, against full tables.

``compression_ratio = full_embedding_bytes / embedding_bytes``; embedding_bytes counts every
parameter AND buffer of the embedding module (tables, scales, projections, sketch state).
"""

from __future__ import annotations

from typing import Dict

from torch import nn

from compactrec.trainer.data.manifest import FeatureSchema

FP32 = 4


def full_embedding_bytes(schema: FeatureSchema, dim: int) -> int:
    return sum(f.cardinality for f in schema.sparse) * dim * FP32


def module_bytes(module: nn.Module) -> int:
    """Bytes of all parameters and buffers (each tensor counted once)."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def embedding_report(module: nn.Module, schema: FeatureSchema, dim: int) -> Dict[str, float]:
    used, full = module_bytes(module), full_embedding_bytes(schema, dim)
    return {
        "embedding_bytes": used,
        "full_embedding_bytes": full,
        "compression_ratio": full / used if used else float("inf"),
    }
