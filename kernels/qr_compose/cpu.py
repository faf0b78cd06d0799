"""qr_compose_pool on native ops: the fast path on CPU (device-agnostic torch, FBGEMM inside).

"add": pooling commutes with the sum, so out = pool(q_rows) + pool(r_rows): two pooled
passes (``row_scale.cpu.pool_rows``: FBGEMM's embedding bag for fp32), no (nnz, d)
intermediate; both gradients are dout[bag_j] (/ len), one gather.
"mult": no such shortcut. A hand-written autograd Function walks the ids in chunks of
``_CHUNK``: multiply the two rows, scatter-add into the bags; the backward gathers the
chunk's dout rows once and writes dout[bag] * r_j and dout[bag] * q_j. Chunks keep the
(chunk, d) intermediates in cache (see qr/cpu.py).
"""

from __future__ import annotations

import torch

from compactrec.kernels._common import bag_of, inv_lengths
from compactrec.kernels.qr_compose.reference import check_inputs
from compactrec.kernels.row_scale.cpu import one_hot, pool_rows

_CHUNK = 4096  # ids per chunk: three (4096, d) fp32 buffers stay in L2 for d <= 64


def _mul_into(dst: torch.Tensor, g: torch.Tensor, other: torch.Tensor) -> None:
    """dst = g * other in fp32, stored in dst's dtype (no fp32 temporary when dst is fp32)."""
    if dst.dtype == torch.float32:
        torch.mul(g, other, out=dst)
    else:
        dst.copy_(g * other.float())


class _QRComposePoolCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_rows, r_rows, offsets, mult, mean):
        nnz, d = q_rows.shape
        bags = bag_of(offsets, nnz)
        if mult:
            out = torch.zeros(offsets.numel() - 1, d, dtype=torch.float32, device=q_rows.device)
            for s in range(0, nnz, _CHUNK):
                e = torch.mul(q_rows[s : s + _CHUNK].float(), r_rows[s : s + _CHUNK].float())
                out.index_add_(0, bags[s : s + _CHUNK], e)
        else:
            out = pool_rows(q_rows, offsets, bags)
            out += pool_rows(r_rows, offsets, bags)
        if mean:
            out.mul_(inv_lengths(offsets)[:, None])
        ctx.save_for_backward(q_rows, r_rows, offsets, bags)
        ctx.cfg = (mult, mean)
        return out.to(q_rows.dtype)

    @staticmethod
    def backward(ctx, dout):
        q_rows, r_rows, offsets, bags = ctx.saved_tensors
        mult, mean = ctx.cfg
        need_q, need_r = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = dout.float()
        if mean:
            g = g * inv_lengths(offsets)[:, None]  # (B, d)
        g = g.contiguous()
        if not mult:  # d e / d q = d e / d r = 1: both gradients are the gathered dout rows
            gb = g.index_select(0, bags)
            return (gb.to(q_rows.dtype) if need_q else None, gb.to(r_rows.dtype) if need_r else None,
                    None, None, None)
        grad_q = torch.empty_like(q_rows) if need_q else None
        grad_r = torch.empty_like(r_rows) if need_r else None
        for s in range(0, q_rows.shape[0], _CHUNK):
            gb = g.index_select(0, bags[s : s + _CHUNK])  # (chunk, d) fp32
            if need_q:
                _mul_into(grad_q[s : s + _CHUNK], gb, r_rows[s : s + _CHUNK])
            if need_r:
                _mul_into(grad_r[s : s + _CHUNK], gb, q_rows[s : s + _CHUNK])
        return grad_q, grad_r, None, None, None


def qr_compose_pool(
    q_rows: torch.Tensor,
    r_rows: torch.Tensor,
    offsets: torch.Tensor,
    *,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """q_rows, r_rows (nnz, d), offsets (B+1,) -> (B, d)."""
    offsets, mult, mean = check_inputs(q_rows, r_rows, offsets, operation, mode)
    if one_hot(offsets, q_rows.shape[0]):  # bag j is id j: the composition is the output
        q, r = q_rows.float(), r_rows.float()
        return (q * r if mult else q + r).to(q_rows.dtype)
    return _QRComposePoolCPU.apply(q_rows, r_rows, offsets, mult, mean)
