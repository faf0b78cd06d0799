"""Byte accounting: what a method keeps for training and inference, against full tables.

``compression_ratio = full_embedding_bytes / embedding_bytes``; embedding_bytes counts every
tensor of the module's state (parameters and persistent buffers: tables, scales,
projections, id maps, sketch state) at its own element size (fp16 tables: 2 bytes a value,
``embedding.precision``), i.e. what a checkpoint of it holds. Non-persistent buffers are
constants derived from the config (e.g. per-feature moduli) and not counted. The full tables
are counted in fp32: a ratio is always against the fp32 baseline. The sparse optimizer's
state (fp32 in FBGEMM at every precision) is reported beside it, not in the ratio.
"""

from __future__ import annotations

from typing import Dict, Optional

from torch import nn

from compactrec.data.reader.manifest import FeatureSchema

FP32 = 4


def full_embedding_bytes(schema: FeatureSchema, dim: int) -> int:
    return sum(f.cardinality for f in schema.sparse) * dim * FP32


def module_bytes(module: nn.Module) -> int:
    """Bytes of the module's state: parameters and persistent buffers, each counted once."""
    seen, total = set(), 0
    for t in module.state_dict(keep_vars=True).values():
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def embedding_report(module: nn.Module, schema: FeatureSchema, dim: int,
                     sparse_optimizer: Optional[str] = None) -> Dict[str, float]:
    """Bytes and ratio of ``module``; with ``sparse_optimizer`` (``optim.sparse``) also the
    bytes of that optimizer's state over the module's tables."""
    used, full = module_bytes(module), full_embedding_bytes(schema, dim)
    report: Dict[str, float] = {
        "embedding_bytes": used,
        "full_embedding_bytes": full,
        "compression_ratio": full / used if used else float("inf"),
    }
    if sparse_optimizer is not None:
        from compactrec.embeddings.precision import sparse_optimizer_state_bytes

        report["sparse_optimizer_state_bytes"] = sparse_optimizer_state_bytes(module, sparse_optimizer)
    return report
