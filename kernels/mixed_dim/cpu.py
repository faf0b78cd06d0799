"""mixed_dim_bag on native ops: the fast path on CPU (device-agnostic torch, FBGEMM inside).

Per block k: select the block's ids (one compare per id), then whichever is cheaper:
  * pool first: ``F.embedding_bag`` (FBGEMM; fp32 gather + scatter-add for bf16 tables, so
    the pooled rows stay fp32) -> (B, d_k), one (B, d_k) x (d_k, d) GEMM; the table gradient
    is the transposed bag (``_common.transposed_bag``), as in hash_scale;
  * project per id when the block has fewer ids than bags (nnz_k < B, e.g. a one-hot
    feature's rare tail): (nnz_k, d_k) x (d_k, d), then a scatter-add into the bags.
Pooling commutes with the projection, so both give the same sum; the first does B rows of
GEMM instead of nnz_k. Autograd supplies the projection gradients.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from compactrec.kernels._common import bag_of, check_jagged, check_mode, inv_lengths, transposed_bag
from compactrec.kernels.mixed_dim.reference import block_bounds, output_dim


class _PoolFP32(torch.autograd.Function):
    """(B, d_k) fp32 sums of ``table[rows]`` per bag, whatever the table dtype.

    fp32 tables pool with FBGEMM's embedding bag; bf16 ones gather and scatter-add in fp32,
    so the pooled rows are not rounded before the projection mixes them. The backward is
    the transposed bag, accumulated in fp32 and rounded once to the table dtype (autograd
    through a bf16 gather would round every occurrence's gradient first).
    """

    @staticmethod
    def forward(ctx, rows, bags, offsets, table, b):
        ctx.save_for_backward(rows, bags)
        ctx.shape = table.shape, table.dtype
        if table.dtype == torch.float32:
            return F.embedding_bag(rows, table, offsets, mode="sum", include_last_offset=True)
        pooled = torch.zeros(b, table.shape[1], dtype=torch.float32, device=table.device)
        return pooled.index_add_(0, bags, F.embedding(rows, table).float())

    @staticmethod
    def backward(ctx, gpooled):
        rows, bags = ctx.saved_tensors
        (n, _), dtype = ctx.shape
        return None, None, None, transposed_bag(rows, bags, gpooled, n).to(dtype), None


def _pool(rows: torch.Tensor, bags: torch.Tensor, offsets, table: torch.Tensor, b: int) -> torch.Tensor:
    if offsets is None:
        offsets = torch.zeros(b + 1, dtype=torch.int64, device=rows.device)
        offsets[1:] = torch.cumsum(torch.bincount(bags, minlength=b), 0)
    return _PoolFP32.apply(rows, bags, offsets, table, b)


def mixed_dim_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    block_offsets,
    tables: Sequence[torch.Tensor],
    projections: Sequence[Optional[torch.Tensor]],
    mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,) virtual rows, offsets (B+1,), K tables (n_k, d_k), K projections (d_k, d)|None -> (B, d)."""
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "mixed_dim_bag")
    bo = block_bounds(block_offsets, tables, projections)
    d = output_dim(tables, projections)
    b = offsets.numel() - 1
    ids = values.to(torch.int64)
    bags = bag_of(offsets, ids.numel())
    out = None
    for k, (t, p) in enumerate(zip(tables, projections)):
        if len(tables) == 1:  # every id is in the block: keep the caller's bags
            rows_k, bags_k, offs_k = ids - bo[0], bags, offsets
        else:
            sel = torch.nonzero((ids >= bo[k]) & (ids < bo[k + 1])).view(-1)
            rows_k, bags_k, offs_k = ids[sel] - bo[k], bags[sel], None
        n = rows_k.numel()
        if p is not None and n < b:  # sparse block: project its few rows, then scatter to bags
            each = torch.arange(n + 1, device=ids.device)  # one id per "bag": an fp32 gather
            e = _pool(rows_k, each[:n], each, t, n) @ p.float()  # (nnz_k, d)
            term = torch.zeros(b, d, dtype=torch.float32, device=e.device).index_add(0, bags_k, e)
        else:
            pooled = _pool(rows_k, bags_k, offs_k, t, b)  # (B, d_k) fp32
            term = pooled @ p.float() if p is not None else pooled  # (B, d)
        out = term if out is None else out + term
    if mean:
        out = out * inv_lengths(offsets)[:, None]
    return out.to(tables[0].dtype)
