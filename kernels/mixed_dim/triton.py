"""mixed_dim_bag in Triton: per-block pooled lookup fused with the block's projection.

One launch per block k (K is small and each block has its own table tensor): a program
owns BLOCK_B bags, pools the bag's ids that fall in block k into a (BLOCK_B, d_k) fp32 tile,
multiplies that tile by P_k (tl.dot, fp32 "ieee": the product is tiny next to the gather, so
TF32's 10-bit mantissa buys nothing) and adds it into the (B, d) output. The pooled tile
never goes to memory unless P_k needs a gradient (then it is saved: grad P_k = pooled^T dout).
Backward: dpooled_k = dout @ P_k^T and grad P_k by cuBLAS GEMMs (dense, already optimal),
then every table gradient by one sorted segment reduction over the virtual row space
(``kernels/_segment.py``), each block reading its slice of the CSR.

Memory-traffic model (e = element size, nnz_k lookups into block k, B bags, K blocks):
  forward   per lookup: table row e*d_k; per bag and block: offsets 16, its ids re-read
            (s bytes each; the bag's ids are scanned once per block), output read+write
            8*d (4*d for the first block), P_k e*d_k*d once per program (L2 resident),
            + 4*d_k pooled write when saved for backward
  backward  per lookup: sort ~40, perm + bag 16, dpooled row 4*d_k; per table row CSR 16 +
            gradient write e*d_k; GEMMs read dout, pooled and P_k once each.
Floor (forward): sum_k nnz_k*e*d_k + nnz*s + B*e*d: the ids and the output once, each row once.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import (
    bag_of, check_jagged, check_mode, inv_lengths, new_output, next_pow2, sort_segments, tile_sizes,
)
from compactrec.kernels._segment import segment_grad
from compactrec.kernels.mixed_dim.reference import block_bounds, output_dim


@triton.jit
def _mixed_dim_block_fwd_kernel(
    values_ptr, offsets_ptr, table_ptr, stride_t, proj_ptr, stride_p, acc_ptr, out_ptr, stride_o,
    pooled_ptr, stride_pl, B, D, DK, lo, hi,
    HAS_PROJ: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_POOLED: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    ks = tl.arange(0, BLOCK_K)
    kmask = ks < DK
    pooled = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_)
        pmask = pos < end[:, None]
        ids = tl.load(values_ptr + pos, mask=pmask, other=0).to(tl.int64)
        inb = pmask & (ids >= lo) & (ids < hi)  # only this block's ids are gathered
        t = tl.load(table_ptr + (ids - lo)[:, :, None] * stride_t + ks[None, None, :],
                    mask=inb[:, :, None] & kmask[None, None, :], other=0.0)
        pooled += tl.sum(t.to(tl.float32), axis=1)
    if MEAN:
        pooled = pooled / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    if STORE_POOLED:
        tl.store(pooled_ptr + bags[:, None] * stride_pl + ks[None, :], pooled, mask=bmask[:, None] & kmask[None, :])
    if HAS_PROJ:
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            cmask = cols < D
            p = tl.load(proj_ptr + ks[:, None] * stride_p + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                        other=0.0)
            y = tl.dot(pooled, p.to(tl.float32), input_precision="ieee")  # (B_, D_)
            o = bags[:, None] * stride_o + cols[None, :]
            omask = bmask[:, None] & cmask[None, :]
            if ACCUMULATE:
                y += tl.load(acc_ptr + o, mask=omask, other=0.0).to(tl.float32)
            tl.store(out_ptr + o, y.to(out_ptr.dtype.element_ty), mask=omask)
    else:  # identity block: d_k == d
        o = bags[:, None] * stride_o + ks[None, :]
        omask = bmask[:, None] & kmask[None, :]
        if ACCUMULATE:
            pooled += tl.load(acc_ptr + o, mask=omask, other=0.0).to(tl.float32)
        tl.store(out_ptr + o, pooled.to(out_ptr.dtype.element_ty), mask=omask)


def mixed_dim_block_fwd(values, offsets, table, proj, acc, out, lo: int, accumulate: bool, save_pooled: bool,
                        mean: bool):
    """out (B, d) = acc (if accumulate) + block k's projected pooled rows; acc and out may alias.
    Returns pooled (B, d_k) fp32 when saved for backward."""
    b, d, dk = out.shape[0], out.shape[1], table.shape[1]
    pooled = new_output((b, dk), torch.float32, out.device) if save_pooled else None
    block_k = max(16, next_pow2(dk))  # tl.dot needs every dimension >= 16
    block_b, block_n, _ = tile_sizes(b, values.numel(), block_k, min_groups=16, full_width=True)
    block_d = max(16, min(64, next_pow2(d)))
    _mixed_dim_block_fwd_kernel[(triton.cdiv(b, block_b),)](
        values, offsets, table, table.stride(0),
        proj if proj is not None else table, proj.stride(0) if proj is not None else 0,
        acc, out, out.stride(0), pooled if pooled is not None else out, pooled.stride(0) if pooled is not None else 0,
        b, d, dk, lo, lo + table.shape[0],
        HAS_PROJ=proj is not None, ACCUMULATE=accumulate, STORE_POOLED=save_pooled, MEAN=mean,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
    )
    return pooled


class _MixedDimBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, offsets, bo, has_proj, mean, *params):
        k = len(has_proj)
        tables, projs = params[:k], _expand(params[k:], has_proj)
        d = output_dim(tables, projs)
        out = new_output((offsets.numel() - 1, d), tables[0].dtype, tables[0].device)
        # Partial sums stay fp32 between blocks; only the last block writes the table dtype.
        acc = out if out.dtype == torch.float32 or k == 1 else new_output(out.shape, torch.float32, out.device)
        pooled = []
        p_grad = _expand(ctx.needs_input_grad[5 + k:], has_proj)
        for i, (t, p) in enumerate(zip(tables, projs)):
            if out.numel():
                dst = out if i == k - 1 else acc
                pooled.append(mixed_dim_block_fwd(values, offsets, t, p, acc, dst, bo[i], i > 0, bool(p_grad[i]),
                                                  mean))
            else:  # no bags (or d == 0): nothing to launch; grad P_k = 0
                pooled.append(t.new_zeros((out.shape[0], t.shape[1]), dtype=torch.float32) if p_grad[i] else None)
        ctx.save_for_backward(values, offsets, *params)
        ctx.pooled, ctx.cfg = pooled, (bo, has_proj, mean)
        return out

    @staticmethod
    def backward(ctx, dout):
        values, offsets, *params = ctx.saved_tensors
        bo, has_proj, mean = ctx.cfg
        k = len(has_proj)
        tables, projs = params[:k], _expand(params[k:], has_proj)
        g = dout.float().contiguous()  # (B, d)
        need_t = ctx.needs_input_grad[5 : 5 + k]
        if any(need_t):  # one sort over the virtual row space; block i reads its CSR slice
            perm, seg = sort_segments(values.to(torch.int64), bo[-1])
            bags, inv = bag_of(offsets, values.numel()), inv_lengths(offsets) if mean else None
        grads_t, grads_p = [], []
        for i, (t, p) in enumerate(zip(tables, projs)):
            grad_t = None
            if need_t[i]:
                gp = g @ p.float().t() if p is not None else g  # (B, d_k): pooling commutes with P_k
                grad_t, _ = segment_grad(seg[bo[i] : bo[i + 1] + 1], perm, bags, gp.contiguous(), t.dtype, inv=inv)
            grads_t.append(grad_t)
            if p is not None:
                pooled = ctx.pooled[i]  # (B, d_k) fp32, saved when P_k needs a gradient
                grads_p.append((pooled.t() @ g).to(p.dtype) if pooled is not None else None)
        return (None,) * 5 + tuple(grads_t) + tuple(grads_p)


def _expand(present, has_proj):
    """The non-None projections back in block order, None where a block has identity."""
    it = iter(present)
    return [next(it) if h else None for h in has_proj]


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
    bo = tuple(block_bounds(block_offsets, tables, projections))
    has_proj = tuple(p is not None for p in projections)
    tables = [t if t.stride(-1) == 1 else t.contiguous() for t in tables]
    projs = [p if p.stride(-1) == 1 else p.contiguous() for p in projections if p is not None]
    return _MixedDimBag.apply(values.contiguous(), offsets, bo, has_proj, mean, *tables, *projs)
