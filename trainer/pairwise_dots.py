"""The pairwise dot products of DLRM's interaction as one autograd Function (torch only).

``PairwiseDots.apply(c, idx)``: c (B, N, D) stacked vectors, idx (P,) int64 flat positions
i * N + j (i < j) -> (B, P), c_i . c_j for each pair, in idx's order.
- forward: G = c c^T with one ``bmm``, the pairs taken with ``gather`` from G flattened to
  (B, N^2): the same products, in the same order, as TorchRec's ``G[:, i, j]`` (bit-identical);
- backward: dL/dG is the output gradient scattered into those positions (zero elsewhere), and
  since G = c c^T, dL/dc = (dG + dG^T) c: ONE ``bmm`` where autograd's dG c + dG^T c takes two,
  and a ``scatter_`` where advanced indexing's backward takes an accumulating ``index_put_``.
  Equal to autograd's gradient up to float rounding (the sum is taken before the product).
Imports only torch, so ``benchmarks/gpu_check.py`` runs it on a GPU machine without TorchRec;
``trainer/interaction.py`` puts it inside TorchRec's ``InteractionArch``.
"""

from __future__ import annotations

from typing import Tuple

import torch


class PairwiseDots(torch.autograd.Function):
    """c (B, N, D), idx (P,) int64 flat positions i * N + j -> (B, P): c_i . c_j per pair."""

    @staticmethod
    def forward(ctx, c: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        b, n = c.shape[0], c.shape[1]
        gram = torch.bmm(c, c.transpose(1, 2))  # (B, N, N)
        ctx.save_for_backward(c, idx)
        return torch.gather(gram.view(b, n * n), 1, idx.expand(b, -1))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> Tuple[torch.Tensor, None]:  # type: ignore[override]
        c, idx = ctx.saved_tensors
        b, n = c.shape[0], c.shape[1]
        dg = grad.new_zeros(b, n * n).scatter_(1, idx.expand(b, -1), grad).view(b, n, n)
        return torch.bmm(dg + dg.transpose(1, 2), c), None


def upper_pairs(n: int, device: torch.device | None = None) -> torch.Tensor:
    """(n(n-1)/2,) int64: i * n + j for i < j in row-major order (TorchRec's triu order)."""
    tri = torch.triu_indices(n, n, offset=1, device=device)
    return tri[0] * n + tri[1]
