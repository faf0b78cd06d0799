"""scale_pool in Triton: per-id scale (+ bias) of looked-up rows, pooled per bag, one pass each way.

This is the half of hash_scale_bag that runs after TorchRec's lookup (sharded or not):
TorchRec gathers rows_j = table[h(i_j)] (and the per-id scale / bias, 1-wide lookups), and
this op composes and pools them.
Forward: a program owns BLOCK_B bags and BLOCK_D columns, walks the bags' rows BLOCK_N at a
time (they are contiguous: row j of bag b is rows[offsets[b] + j]), scales them and sums
in fp32, adds the bags' bias sums to every column, and writes each pooled row once.
Backward: a program owns BLOCK_B bags and walks their ids; for each id chunk it sweeps the
columns BLOCK_D at a time, so one pass writes grad_rows (the bag's dout row times scale_j)
and accumulates the scale gradient <rows_j, dout[bag]> over all columns; the bias gradient
(the row sum of dout, per bag) is computed once per bag and written to each of its ids.
Each gradient element has exactly one writer: no atomics, deterministic, and every element
of the (nnz, d) / (nnz,) outputs is written (a poisoned buffer checks coverage). Work and
memory are proportional to the batch (nnz x d), never to a table's size.

Memory-traffic model (e = row element size, a = scale/bias element size, D = dim, nnz rows,
B bags; offsets 16 B per bag):
  forward   per id: row e*D + scale a (+ bias a); per bag: offsets 16 + output e*D
  backward  per id: grad_rows write e*D (when rows need a gradient), row read e*D (when the
            scale does), scale a, grad_scale / grad_bias writes a each; per bag: offsets 16,
            dout row e*D (re-read per id chunk of BLOCK_N ids: from cache), once more for
            the bias row sum
Floor (forward): nnz*(e*D + a [+ a]) + B*e*D; (backward, all gradients): nnz*(2*e*D + 3*a) + B*e*D.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import new_output, tile_sizes
from compactrec.kernels.row_scale.reference import check_inputs


@triton.jit
def _scale_pool_fwd_kernel(
    rows_ptr, stride_r, offsets_ptr, scale_ptr, bias_ptr, out_ptr, stride_o, B, D,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, MEAN: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    bias_acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_) row indices
        pmask = pos < end[:, None]
        r = tl.load(rows_ptr + pos[:, :, None] * stride_r + cols[None, None, :],
                    mask=pmask[:, :, None] & cmask[None, None, :], other=0.0).to(tl.float32)
        if HAS_SCALE:
            r = r * tl.load(scale_ptr + pos, mask=pmask, other=0.0).to(tl.float32)[:, :, None]
        acc += tl.sum(r, axis=1)
        if HAS_BIAS:
            bias_acc += tl.sum(tl.load(bias_ptr + pos, mask=pmask, other=0.0).to(tl.float32), axis=1)
    acc += bias_acc[:, None]
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + bags[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=bmask[:, None] & cmask[None, :])


@triton.jit
def _scale_pool_bwd_kernel(
    g_ptr, stride_g, offsets_ptr, rows_ptr, stride_r, scale_ptr,
    grad_r_ptr, stride_gr, grad_s_ptr, grad_b_ptr, B, D,
    HAS_SCALE: tl.constexpr, NEED_ROWS: tl.constexpr, NEED_SCALE: tl.constexpr, NEED_BIAS: tl.constexpr,
    MEAN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    if MEAN:
        w_bag = 1.0 / tl.maximum(end - start, 1).to(tl.float32)  # (B_,)
    else:
        w_bag = tl.full((BLOCK_B,), 1.0, tl.float32)
    if NEED_BIAS:  # d out / d bias_j = sum_c dout[bag_j, c] (/ len): once per bag
        gsum = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            g = tl.load(g_ptr + bags[:, None] * stride_g + cols[None, :],
                        mask=bmask[:, None] & (cols < D)[None, :], other=0.0).to(tl.float32)
            gsum += tl.sum(g, axis=1)
        gsum = gsum * w_bag
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_)
        pmask = pos < end[:, None]
        if NEED_ROWS or NEED_SCALE:
            if HAS_SCALE:
                s = tl.load(scale_ptr + pos, mask=pmask, other=0.0).to(tl.float32)
            else:
                s = tl.full((BLOCK_B, BLOCK_N), 1.0, tl.float32)
            dot = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                cmask = cols < D
                g = tl.load(g_ptr + bags[:, None] * stride_g + cols[None, :],
                            mask=bmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
                g = g * w_bag[:, None]  # (B_, D_)
                m3 = pmask[:, :, None] & cmask[None, None, :]
                if NEED_ROWS:
                    gr = g[:, None, :] * s[:, :, None]  # (B_, N_, D_)
                    tl.store(grad_r_ptr + pos[:, :, None] * stride_gr + cols[None, None, :],
                             gr.to(grad_r_ptr.dtype.element_ty), mask=m3)
                if NEED_SCALE:
                    r = tl.load(rows_ptr + pos[:, :, None] * stride_r + cols[None, None, :], mask=m3,
                                other=0.0).to(tl.float32)
                    dot += tl.sum(r * g[:, None, :], axis=2)
            if NEED_SCALE:
                tl.store(grad_s_ptr + pos, dot.to(grad_s_ptr.dtype.element_ty), mask=pmask)
        if NEED_BIAS:
            gb = tl.broadcast_to(gsum[:, None], (BLOCK_B, BLOCK_N))
            tl.store(grad_b_ptr + pos, gb.to(grad_b_ptr.dtype.element_ty), mask=pmask)


def scale_pool_fwd(rows, offsets, scale, bias, mean: bool) -> torch.Tensor:
    """Launch the forward: (B, d) in the rows' dtype."""
    b, d = offsets.numel() - 1, rows.shape[1]
    out = new_output((b, d), rows.dtype, rows.device)
    if b == 0 or d == 0:
        return out
    block_b, block_n, block_d = tile_sizes(b, rows.shape[0], d)
    dummy = offsets
    _scale_pool_fwd_kernel[(triton.cdiv(b, block_b), triton.cdiv(d, block_d))](
        rows, rows.stride(0), offsets,
        scale if scale is not None else dummy, bias if bias is not None else dummy,
        out, out.stride(0), b, d,
        HAS_SCALE=scale is not None, HAS_BIAS=bias is not None, MEAN=mean,
        BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out


def scale_pool_bwd(dout, offsets, rows, scale, need_rows: bool, need_scale: bool, need_bias: bool,
                   scale_dtype, bias_dtype, mean: bool):
    """Launch the backward: grad_rows (nnz, d) | None, grad_scale (nnz,) | None, grad_bias (nnz,) | None."""
    (nnz, d), b = rows.shape, offsets.numel() - 1
    grad_r = new_output((nnz, d), rows.dtype, rows.device) if need_rows else None
    grad_s = new_output((nnz,), scale_dtype, rows.device) if need_scale else None
    grad_b = new_output((nnz,), bias_dtype, rows.device) if need_bias else None
    if nnz == 0:
        return grad_r, grad_s, grad_b
    block_b, block_n, block_d = tile_sizes(b, nnz, d)
    dummy = offsets
    _scale_pool_bwd_kernel[(triton.cdiv(b, block_b),)](
        dout, dout.stride(0), offsets, rows, rows.stride(0), scale if scale is not None else dummy,
        grad_r if grad_r is not None else dummy, grad_r.stride(0) if grad_r is not None else 0,
        grad_s if grad_s is not None else dummy, grad_b if grad_b is not None else dummy, b, d,
        HAS_SCALE=scale is not None, NEED_ROWS=need_rows, NEED_SCALE=need_scale, NEED_BIAS=need_bias,
        MEAN=mean, BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return grad_r, grad_s, grad_b


class _ScalePool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, offsets, scale, bias, mean):
        ctx.save_for_backward(rows, offsets, scale)
        ctx.cfg = (mean, scale.dtype if scale is not None else None, bias.dtype if bias is not None else None)
        return scale_pool_fwd(rows, offsets, scale, bias, mean)

    @staticmethod
    def backward(ctx, dout):
        rows, offsets, scale = ctx.saved_tensors
        mean, scale_dtype, bias_dtype = ctx.cfg
        need_r, need_s, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        g = dout if dout.stride(-1) == 1 else dout.contiguous()  # (B, d), read in its own dtype
        grad_r, grad_s, grad_b = scale_pool_bwd(g, offsets, rows, scale, need_r, need_s, need_b,
                                                scale_dtype, bias_dtype, mean)
        return grad_r, None, grad_s, grad_b, None


def scale_pool(
    rows: torch.Tensor,
    offsets: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    mode: str = "sum",
) -> torch.Tensor:
    """rows (nnz, d), offsets (B+1,), scale / bias (nnz,) or (nnz, 1) or None -> (B, d)."""
    offsets, mean = check_inputs(rows, offsets, scale, bias, mode)
    rows = rows if rows.stride(-1) == 1 else rows.contiguous()
    # a (nnz, 1) lookup of a 1-wide table is read as (nnz,); autograd maps the gradient back
    scale = scale.reshape(-1).contiguous() if scale is not None else None
    bias = bias.reshape(-1).contiguous() if bias is not None else None
    return _ScalePool.apply(rows, offsets, scale, bias, mean)
