"""qr_bag in Triton: gather the quotient and remainder rows, compose per id, pool, one pass.

Forward: a program owns BLOCK_B bags and BLOCK_D columns; per id it computes q = i // m and
r = i % m in registers, gathers both rows, multiplies (or adds) them in fp32 and accumulates;
each pooled row is written once in the table dtype. Composing before pooling is what makes
multi-hot "mult" bags right (dlrm pools each table first).
Backward: two sorted segment reductions (``kernels/_segment.py``; the Q table in particular
is tiny and shared by m consecutive ids, the worst case for atomics):
  grad_q[q] = sum_j dout[bag_j] (* r_table[r_j] for mult),
  grad_r[r] = sum_j dout[bag_j] (* q_table[q_j] for mult).

Memory-traffic model (e = element size, D = dim, s = id bytes, nnz lookups, B bags):
  forward   per lookup: id s + two rows 2*e*D; per bag: offsets 16 + output e*D
  backward  per lookup and table: sort ~40, perm + bag + partner index 24, dout row 4*D
            (+ partner row e*D for mult); per table row: CSR 16 + gradient write e*D
Floor (forward): nnz*(s + 2*e*D) + B*e*D.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import (
    bag_of, check_jagged, check_mode, inv_lengths, new_output, sort_segments, tile_sizes,
)
from compactrec.kernels._segment import segment_grad
from compactrec.kernels.qr.reference import check_operation


@triton.jit
def _qr_bag_fwd_kernel(
    values_ptr, offsets_ptr, q_ptr, r_ptr, out_ptr, B, D, m, stride_q, stride_r, stride_o,
    MULT: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_)
        pmask = pos < end[:, None]
        ids = tl.load(values_ptr + pos, mask=pmask, other=0).to(tl.int64)
        m3 = pmask[:, :, None] & cmask[None, None, :]
        q = tl.load(q_ptr + (ids // m)[:, :, None] * stride_q + cols[None, None, :], mask=m3, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + (ids % m)[:, :, None] * stride_r + cols[None, None, :], mask=m3, other=0.0).to(tl.float32)
        if MULT:
            acc += tl.sum(q * r, axis=1)
        else:
            acc += tl.sum(q + r, axis=1)
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + bags[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=bmask[:, None] & cmask[None, :])


def qr_bag_fwd(values, offsets, q_table, r_table, m: int, mult: bool, mean: bool) -> torch.Tensor:
    """Launch the forward: (B, d) in the table dtype."""
    b, d = offsets.numel() - 1, q_table.shape[1]
    out = new_output((b, d), q_table.dtype, q_table.device)
    if b == 0 or d == 0:
        return out
    block_b, block_n, block_d = tile_sizes(b, values.numel(), d)
    _qr_bag_fwd_kernel[(triton.cdiv(b, block_b), triton.cdiv(d, block_d))](
        values, offsets, q_table, r_table, out, b, d, m, q_table.stride(0), r_table.stride(0), out.stride(0),
        MULT=mult, MEAN=mean, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out


class _QRBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, offsets, q_table, r_table, m, mult, mean):
        ctx.save_for_backward(values, offsets, q_table, r_table)
        ctx.cfg = (m, mult, mean)
        return qr_bag_fwd(values, offsets, q_table, r_table, m, mult, mean)

    @staticmethod
    def backward(ctx, dout):
        values, offsets, q_table, r_table = ctx.saved_tensors
        m, mult, mean = ctx.cfg
        g = dout.float().contiguous()  # (B, d)
        ids = values.to(torch.int64)
        qi, ri = ids // m, ids % m
        bags, inv = bag_of(offsets, ids.numel()), inv_lengths(offsets) if mean else None
        grad_q = grad_r = None
        if ctx.needs_input_grad[2]:
            perm, seg = sort_segments(qi, q_table.shape[0])
            grad_q = segment_grad(seg, perm, bags, g, q_table.dtype, inv=inv,
                                  other=r_table if mult else None, other_idx=ri if mult else None)[0]
        if ctx.needs_input_grad[3]:
            perm, seg = sort_segments(ri, r_table.shape[0])
            grad_r = segment_grad(seg, perm, bags, g, r_table.dtype, inv=inv,
                                  other=q_table if mult else None, other_idx=qi if mult else None)[0]
        return None, None, grad_q, grad_r, None, None, None


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
    q_table = q_table if q_table.stride(-1) == 1 else q_table.contiguous()
    r_table = r_table if r_table.stride(-1) == 1 else r_table.contiguous()
    return _QRBag.apply(values.contiguous(), offsets, q_table, r_table, collisions, mult, mean)
