"""Compression budgets: ``compression: {ratio: R}`` or ``{bytes: B}`` -> bytes -> each method's
hyperparameters (each method's ``plan_*`` in its own file), and the search helpers they share.

Byte accounting is exact: every parameter and buffer a method keeps (tables, scales,
projections, id maps, sketch state), 4 bytes per fp32 value. A method's ``*_bytes(plan)``
equals ``module_bytes`` of the module built from that plan (tested), and the achieved ratio
is ``full_embedding_bytes / embedding_bytes``.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Optional

from compactrec.embeddings.accounting import FP32, full_embedding_bytes
from compactrec.trainer.config import CompressionConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature


class BudgetError(ValueError):
    """The requested compression cannot be met by this method (the message says its limit)."""


def budget_bytes(compression: CompressionConfig, schema: FeatureSchema, dim: int) -> int:
    """Target bytes of the embedding module."""
    full = full_embedding_bytes(schema, dim)
    if compression.bytes is not None:
        if compression.bytes <= 0:
            raise BudgetError(f"compression.bytes must be positive, got {compression.bytes}")
        return int(compression.bytes)
    if compression.ratio is None:
        raise BudgetError("set compression.ratio or compression.bytes (or the method's explicit sizes)")
    if compression.ratio < 1:
        raise BudgetError(f"compression.ratio must be >= 1, got {compression.ratio}")
    return int(full / compression.ratio)


def full_table_bytes(features: List[SparseFeature], dim: int) -> int:
    return sum(f.cardinality for f in features) * dim * FP32


def bisect(
    bytes_at: Callable[[float], int], target: int, lo: float, hi: float, increasing: bool, iters: int = 60
) -> float:
    """The knob x in [lo, hi] whose ``bytes_at(x)`` is largest while <= target.

    ``bytes_at`` must be monotone in x (``increasing`` says which way).
    """
    if increasing:
        if bytes_at(lo) > target:
            raise BudgetError("budget below the method's minimum size")
        for _ in range(iters):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if bytes_at(mid) <= target else (lo, mid)
        return lo
    if bytes_at(hi) > target:
        raise BudgetError("budget below the method's minimum size")
    for _ in range(iters):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if bytes_at(mid) <= target else (mid, hi)
    return hi


def proportional_rows(
    features: List[SparseFeature], total_rows: float, minimum: int = 1, maximum: Optional[Dict[str, int]] = None
) -> Dict[str, int]:
    """Rows per feature proportional to cardinality, at least ``minimum``, at most the
    feature's cardinality (or ``maximum[name]``), summing to about ``total_rows``."""
    card = {f.name: f.cardinality for f in features}
    cap = {n: (maximum or {}).get(n, c) for n, c in card.items()}
    total_card = sum(card.values())

    def rows_at(scale: float) -> Dict[str, int]:
        return {n: int(min(cap[n], max(minimum, round(scale * c / total_card)))) for n, c in card.items()}

    hi = 4.0 * max(total_rows, total_card) + 1
    scale = bisect(lambda s: sum(rows_at(s).values()), int(total_rows), 0.0, hi, increasing=True)
    return rows_at(scale)
