"""qr_compose_pool in Triton: compose each id's quotient and remainder rows, pool, one pass each way.

The half of qr_bag that runs after TorchRec's lookups (sharded or not): TorchRec gathers
q_j = q_table[i_j // m] and r_j = r_table[i_j % m]; this op composes and pools them.
Forward: a program owns BLOCK_B bags and BLOCK_D columns and walks the bags' ids BLOCK_N at
a time (rows of bag b are contiguous from offsets[b]): loads q_j and r_j, multiplies (or
adds) them in fp32, accumulates, and writes each pooled row once in q_rows' dtype.
Backward: the same tiling; the bag's dout tile is loaded once (scaled by 1/len for mean),
then per id: grad_q[j] = dout[bag] * r_j and grad_r[j] = dout[bag] * q_j ("mult"), or both
dout[bag] ("add": the rows are not read). One writer per element: no atomics, deterministic,
every element written. Work and memory are proportional to nnz x d, never to a table.

Memory-traffic model (e = element size, D = dim, nnz ids, B bags, offsets 16 B per bag):
  forward   per id: two rows 2*e*D; per bag: offsets 16 + output e*D
  backward  per id: two gradient writes 2*e*D (+ two row reads 2*e*D for "mult");
            per bag: offsets 16 + dout row e*D
Floor: forward nnz*2*e*D + B*e*D; backward nnz*4*e*D + B*e*D ("mult"), nnz*2*e*D + B*e*D ("add").
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import new_output, tile_sizes
from compactrec.kernels.qr_compose.reference import check_inputs


@triton.jit
def _qr_compose_fwd_kernel(
    q_ptr, stride_q, r_ptr, stride_r, offsets_ptr, out_ptr, stride_o, B, D,
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
        m3 = (pos < end[:, None])[:, :, None] & cmask[None, None, :]
        q = tl.load(q_ptr + pos[:, :, None] * stride_q + cols[None, None, :], mask=m3, other=0.0).to(tl.float32)
        r = tl.load(r_ptr + pos[:, :, None] * stride_r + cols[None, None, :], mask=m3, other=0.0).to(tl.float32)
        if MULT:
            acc += tl.sum(q * r, axis=1)
        else:
            acc += tl.sum(q + r, axis=1)
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + bags[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=bmask[:, None] & cmask[None, :])


@triton.jit
def _qr_compose_bwd_kernel(
    g_ptr, stride_g, offsets_ptr, q_ptr, stride_q, r_ptr, stride_r,
    gq_ptr, stride_gq, gr_ptr, stride_gr, B, D,
    MULT: tl.constexpr, MEAN: tl.constexpr, NEED_Q: tl.constexpr, NEED_R: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    g = tl.load(g_ptr + bags[:, None] * stride_g + cols[None, :], mask=bmask[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)  # (B_, D_): read once for all the bags' ids
    if MEAN:
        g = g / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    g3 = g[:, None, :]
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_)
        m3 = (pos < end[:, None])[:, :, None] & cmask[None, None, :]
        if MULT:
            if NEED_Q:
                r = tl.load(r_ptr + pos[:, :, None] * stride_r + cols[None, None, :], mask=m3, other=0.0)
                tl.store(gq_ptr + pos[:, :, None] * stride_gq + cols[None, None, :],
                         (g3 * r.to(tl.float32)).to(gq_ptr.dtype.element_ty), mask=m3)
            if NEED_R:
                q = tl.load(q_ptr + pos[:, :, None] * stride_q + cols[None, None, :], mask=m3, other=0.0)
                tl.store(gr_ptr + pos[:, :, None] * stride_gr + cols[None, None, :],
                         (g3 * q.to(tl.float32)).to(gr_ptr.dtype.element_ty), mask=m3)
        else:
            gb = tl.broadcast_to(g3, (BLOCK_B, BLOCK_N, BLOCK_D))
            if NEED_Q:
                tl.store(gq_ptr + pos[:, :, None] * stride_gq + cols[None, None, :],
                         gb.to(gq_ptr.dtype.element_ty), mask=m3)
            if NEED_R:
                tl.store(gr_ptr + pos[:, :, None] * stride_gr + cols[None, None, :],
                         gb.to(gr_ptr.dtype.element_ty), mask=m3)


def qr_compose_fwd(q_rows, r_rows, offsets, mult: bool, mean: bool) -> torch.Tensor:
    """Launch the forward: (B, d) in q_rows' dtype."""
    b, d = offsets.numel() - 1, q_rows.shape[1]
    out = new_output((b, d), q_rows.dtype, q_rows.device)
    if b == 0 or d == 0:
        return out
    block_b, block_n, block_d = tile_sizes(b, q_rows.shape[0], d)
    _qr_compose_fwd_kernel[(triton.cdiv(b, block_b), triton.cdiv(d, block_d))](
        q_rows, q_rows.stride(0), r_rows, r_rows.stride(0), offsets, out, out.stride(0), b, d,
        MULT=mult, MEAN=mean, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out


def qr_compose_bwd(dout, offsets, q_rows, r_rows, mult: bool, mean: bool, need_q: bool, need_r: bool):
    """Launch the backward: grad_q, grad_r (nnz, d) in their rows' dtypes (None where not needed)."""
    (nnz, d), b = q_rows.shape, offsets.numel() - 1
    grad_q = new_output((nnz, d), q_rows.dtype, q_rows.device) if need_q else None
    grad_r = new_output((nnz, d), r_rows.dtype, r_rows.device) if need_r else None
    if nnz == 0 or d == 0:
        return grad_q, grad_r
    block_b, block_n, block_d = tile_sizes(b, nnz, d)
    gq = grad_q if grad_q is not None else q_rows  # placeholders: the kernel never touches them
    gr = grad_r if grad_r is not None else r_rows
    _qr_compose_bwd_kernel[(triton.cdiv(b, block_b), triton.cdiv(d, block_d))](
        dout, dout.stride(0), offsets, q_rows, q_rows.stride(0), r_rows, r_rows.stride(0),
        gq, gq.stride(0), gr, gr.stride(0), b, d,
        MULT=mult, MEAN=mean, NEED_Q=need_q, NEED_R=need_r, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return grad_q, grad_r


class _QRComposePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q_rows, r_rows, offsets, mult, mean):
        ctx.save_for_backward(q_rows, r_rows, offsets)
        ctx.cfg = (mult, mean)
        return qr_compose_fwd(q_rows, r_rows, offsets, mult, mean)

    @staticmethod
    def backward(ctx, dout):
        q_rows, r_rows, offsets = ctx.saved_tensors
        mult, mean = ctx.cfg
        g = dout if dout.stride(-1) == 1 else dout.contiguous()
        grad_q, grad_r = qr_compose_bwd(g, offsets, q_rows, r_rows, mult, mean, *ctx.needs_input_grad[:2])
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
    q_rows = q_rows if q_rows.stride(-1) == 1 else q_rows.contiguous()
    r_rows = r_rows if r_rows.stride(-1) == 1 else r_rows.contiguous()
    return _QRComposePool.apply(q_rows, r_rows, offsets, mult, mean)
