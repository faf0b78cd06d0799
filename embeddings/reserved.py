"""``reserve_unseen``'s reserved rows start at 0 and stay there.

A never-seen id reads its feature's reserved row (``embeddings/seen.py``). That row must be
a NEUTRAL input, as a full table's untrained rows are on average: each new id of a full table
gets its own small random row, and those average out over ids. A reserved row is ONE row for
every new id of the feature, so a random init (U(+-sqrt(1/N))) would hand all of them the same
fixed vector: a bias the model never trained with, added to every new user's interactions in
the same direction. Measured on MovieLens-100K at 10x (docs/quality.md): hash with a random
reserved row lost 2.0% AUC where zeroing new ids' outputs at eval lost 1.3%.

No training forward reads a reserved row (a training forward marks its ids before the lookup),
so it gets no gradient: 0 at the start is 0 forever, under every optimizer here (rowwise
Adagrad and Adagrad touch only rows with gradient; SGD and Adam move a zero-gradient row by 0).

Tables are built on ``meta`` for DMP and initialised by TorchRec/FBGEMM when sharded, so the
zeroing runs twice: at construction (a real device) and after ``DistributedModelParallel``
(``sharding/shard.py``), where it writes the rank's local shards (no collective).

Example::

    zero_reserved_rows(model)   # every CompressedEmbedding in model; returns the rows zeroed here
"""

from __future__ import annotations

from typing import Dict

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


_COLLECTIONS = ("EmbeddingBagCollection", "EmbeddingCollection",
                "ShardedEmbeddingBagCollection", "ShardedEmbeddingCollection")  # stock, and DMP's


def _weights(module: nn.Module) -> Dict[str, torch.Tensor]:
    """Table name -> its weight (a Tensor or a ShardedTensor) over every collection inside the
    module (ROBE's sit in its arrays), unsharded (``embedding_bags.<t>.weight`` /
    ``embeddings.<t>.weight``) or sharded by DMP."""
    out: Dict[str, torch.Tensor] = {}
    for child in module.modules():
        if type(child).__name__ not in _COLLECTIONS:
            continue
        for key, value in child.state_dict(keep_vars=True).items():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] in ("embedding_bags", "embeddings") and parts[2] == "weight":
                out[parts[1]] = value
    return out


@torch.no_grad()
def _zero_row(weight: torch.Tensor, row: int) -> int:
    """Zero global row ``row`` where this process holds it. Returns the shards written."""
    if isinstance(weight, ShardedTensor):
        written = 0
        for shard in weight.local_shards():
            r0, rows = shard.metadata.shard_offsets[0], shard.metadata.shard_sizes[0]
            if r0 <= row < r0 + rows:
                shard.tensor[row - r0].zero_()
                written += 1
        return written
    if weight.is_meta:
        return 0
    weight.data[row].zero_()
    return 1


def zero_reserved_rows(model: nn.Module) -> int:
    """Zero the reserved rows of every compressed embedding in ``model`` (itself included).
    Returns how many (table, row) shards this process wrote (0 on ``meta`` tables)."""
    from compactrec.embeddings.base import CompressedEmbedding

    written = 0
    for module in model.modules():
        if not isinstance(module, CompressedEmbedding):
            continue
        reserved = module.reserved_rows()
        if not reserved:
            continue
        weights = _weights(module)
        for table, row in reserved.items():
            if table not in weights:
                raise KeyError(f"reserve_unseen: no table {table} in {type(module).__name__}")
            written += _zero_row(weights[table], row)
    return written
