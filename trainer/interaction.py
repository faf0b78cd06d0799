"""DLRM's dot interaction, TorchRec's ``InteractionArch`` with a faster backward.

TorchRec computes the Gram matrix G = C C^T of the stacked vectors C = [dense; e_1 .. e_F]
(B, F + 1, D) with one ``bmm`` and picks its upper triangle with advanced indexing
``G[:, i, j]``. On CPU that pick's backward (``index_put_`` with accumulation) and autograd's
two ``bmm`` for G's two operands cost more than the forward: TorchRec's forward + backward
takes 1.76x the time of this one at B=128 and 1.78x at B=2048 (dim 32, F = 26;
``benchmarks/interaction.py``; ``docs/speed.md``, "The interaction").

``DotInteraction`` gives the same output (bit-identical forward) through ``PairwiseDots``
(``trainer/pairwise_dots.py``: a ``gather`` forward, a ``scatter_`` + one ``bmm`` backward);
gradients equal TorchRec's to float rounding, not bit for bit.

It subclasses ``InteractionArch`` (same buffers, same ``F``, no parameters, no state in a
checkpoint), so ``DLRM`` takes it in place of its own (``trainer/model.py``).
"""

from __future__ import annotations

import torch
from torchrec.models.dlrm import InteractionArch

from compactrec.trainer.pairwise_dots import PairwiseDots, upper_pairs


class DotInteraction(InteractionArch):
    """``InteractionArch(F)``: dense (B, D), sparse (B, F, D) -> (B, D + F + F(F-1)/2), the
    dense vector followed by the upper triangle of the Gram matrix of [dense; sparse] in
    row-major order (TorchRec's order)."""

    def __init__(self, num_sparse_features: int, device: torch.device | None = None) -> None:
        super().__init__(num_sparse_features)
        n = num_sparse_features + 1
        self.triu_indices = torch.triu_indices(n, n, offset=1, device=device)  # the parent's buffer, on ``device``
        self.register_buffer("flat_pairs", upper_pairs(n, device), persistent=False)

    def forward(self, dense_features: torch.Tensor, sparse_features: torch.Tensor) -> torch.Tensor:
        if self.F <= 0:
            return dense_features
        combined = torch.cat((dense_features.unsqueeze(1), sparse_features), dim=1)
        return torch.cat((dense_features, PairwiseDots.apply(combined, self.flat_pairs)), dim=1)
