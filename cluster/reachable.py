"""Can a sweep point be built? Asked in the driver, before any Ray worker starts.

A compression ratio that a method cannot reach (MEmCom's N d / (m d + N) stays below d, QR's
smallest tables bound it by ~sqrt(N), ...) is found by its budget planner. Building the
point's embedding module on the meta device runs exactly that planner without allocating a
table, so a Criteo-TB point is checked in a moment.
"""

from __future__ import annotations

from typing import Optional

from compactrec.data.reader.manifest import FeatureSchema
from compactrec.trainer.config import RunConfig


def unreachable_reason(run: RunConfig, schema: FeatureSchema) -> Optional[str]:
    """``None`` when the point's embedding module can be planned, else the planner's
    message (a ``BudgetError``: the ratio or byte budget is out of the method's reach)."""
    import torch

    from compactrec.embeddings.budget import BudgetError
    from compactrec.embeddings.factory import build_embeddings

    try:
        build_embeddings(run.embedding, run.compression, schema, run.model.embedding_dim, torch.device("meta"))
    except BudgetError as e:
        return str(e).strip()
    return None
