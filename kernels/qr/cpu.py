"""qr_bag on native ops: the fast path on CPU (device-agnostic torch).

"add": pooling commutes with the sum, so out = bag(q_table, i // m) + bag(r_table, i % m):
two FBGEMM embedding bags, exact, autograd for the gradients.
"mult": no such shortcut. A hand-written autograd Function walks the ids in chunks of
``_CHUNK``: gather both rows, multiply, scatter-add into the bags; the backward does the
same with dout[bag] * partner row into each table's gradient. Chunks keep the (chunk, d)
intermediates in cache: composing all nnz rows at once streams 3 x nnz x d floats through
fresh memory and measured 5-10x slower on one core.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compactrec.kernels._common import bag_of, check_jagged, check_mode, inv_lengths
from compactrec.kernels.qr.reference import check_operation

_CHUNK = 4096  # ids per chunk: three (4096, d) fp32 buffers stay in L2 for d <= 64


class _QRMultBagCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, qi, ri, offsets, q_table, r_table, mean):
        b, d = offsets.numel() - 1, q_table.shape[1]
        bags = bag_of(offsets, qi.numel())
        out = torch.zeros(b, d, dtype=torch.float32, device=q_table.device)
        for s in range(0, qi.numel(), _CHUNK):
            q = q_table.index_select(0, qi[s : s + _CHUNK]).float()
            out.index_add_(0, bags[s : s + _CHUNK], q.mul_(r_table.index_select(0, ri[s : s + _CHUNK])))
        if mean:
            out.mul_(inv_lengths(offsets)[:, None])
        ctx.save_for_backward(qi, ri, bags, offsets, q_table, r_table)
        ctx.mean = mean
        return out.to(q_table.dtype)

    @staticmethod
    def backward(ctx, dout):
        qi, ri, bags, offsets, q_table, r_table = ctx.saved_tensors
        g = dout.float()
        if ctx.mean:
            g = g * inv_lengths(offsets)[:, None]  # (B, d)
        need_q, need_r = ctx.needs_input_grad[3:5]
        gq = torch.zeros(q_table.shape, dtype=torch.float32, device=g.device) if need_q else None
        gr = torch.zeros(r_table.shape, dtype=torch.float32, device=g.device) if need_r else None
        for s in range(0, qi.numel(), _CHUNK):
            q_idx, r_idx = qi[s : s + _CHUNK], ri[s : s + _CHUNK]
            gb = g.index_select(0, bags[s : s + _CHUNK])  # (chunk, d)
            if need_q:
                gq.index_add_(0, q_idx, r_table.index_select(0, r_idx).float().mul_(gb))
            if need_r:
                gr.index_add_(0, r_idx, q_table.index_select(0, q_idx).float().mul_(gb))
        return (None, None, None, gq.to(q_table.dtype) if need_q else None,
                gr.to(r_table.dtype) if need_r else None, None)


def qr_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    q_table: torch.Tensor,
    r_table: torch.Tensor,
    *,
    collisions: int,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,) ids, offsets (B+1,), q_table (ceil(N/m), d), r_table (m, d) -> (B, d)."""
    mult = check_operation(operation)
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "qr_bag")
    ids = values.to(torch.int64)
    qi, ri = ids // collisions, ids % collisions
    if mult:
        return _QRMultBagCPU.apply(qi, ri, offsets, q_table, r_table, mean)
    pooled_q = F.embedding_bag(qi, q_table, offsets, mode=mode, include_last_offset=True)
    return pooled_q + F.embedding_bag(ri, r_table, offsets, mode=mode, include_last_offset=True)
