"""Small helpers shared by tests (importable from spawned ranks)."""

from __future__ import annotations

from typing import List

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.data.reader.batch import Batch


def slice_batch(batch: Batch, start: int, stop: int) -> Batch:
    """Rows [start, stop) of a batch, KJT included (any bag lengths)."""
    kjt = batch.sparse_features
    values: List[torch.Tensor] = []
    lengths: List[torch.Tensor] = []
    for key, jt in kjt.to_dict().items():
        offs = jt.offsets()
        values.append(jt.values()[offs[start] : offs[stop]])
        lengths.append(jt.lengths()[start:stop])
    return Batch(
        dense_features=batch.dense_features[start:stop],
        sparse_features=KeyedJaggedTensor(
            keys=kjt.keys(), values=torch.cat(values), lengths=torch.cat(lengths).int()
        ),
        labels=batch.labels[start:stop],
    )
