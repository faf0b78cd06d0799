"""The unit of data between reader and model: TorchRec's ``Batch`` plus a padding count.

Shapes: ``dense_features`` (B, num_dense) float32; ``sparse_features`` a KeyedJaggedTensor
with one key per sparse feature (lengths (F * B,), key-major); ``labels`` (B,) float32.
Eval batches are padded to a fixed size so that every rank runs the same number of
collective steps; rows at ``num_valid`` and after are padding and must not be scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.datasets.utils import Batch as _TorchRecBatch


@dataclass
class Batch(_TorchRecBatch):
    num_valid: int = -1  # -1: every row is real

    @property
    def valid_rows(self) -> int:
        return self.labels.shape[0] if self.num_valid < 0 else self.num_valid

    def to(self, device: torch.device, non_blocking: bool = False) -> "Batch":
        return Batch(
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            num_valid=self.num_valid,
        )
