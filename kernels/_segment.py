"""Table gradients of pooled lookups by sorted segment reduction (shared by all three ops).

For every destination row r of an (R, D) gradient:
    grad[r] = sum over occurrences j with key_j == r of  w_j * G[bag_j] (* O[oidx_j])
with w_j = scale[ids_j] (MEmCom) times 1/len(bag_j) (mean pooling), G the upstream (B, D)
gradient and O an optional partner table (QR "mult": the other factor of the product).
Optionally it also writes, per occurrence, dot_j = <T[r], G[bag_j]> / len(bag_j): the MEmCom
scale gradient before it is summed per entity.

Why sorted segments and not atomics: the tables we write are *shared* (hashed MEmCom rows,
QR quotient/remainder rows, hot mixed-dim rows) and the ids are Zipf-skewed, so many
occurrences hit the same row; atomics serialise on exactly those rows, are
non-deterministic in fp32, and for bf16 tables would either round every add to bf16 or need
an fp32 shadow gradient plus a cast pass. After one stable sort
(``_common.sort_segments``) each row's contributions are contiguous: a program reduces its
rows in fp32 registers and writes each row once, in the table dtype, deterministically. This
is what FBGEMM's TBE backward does (sort, then segment-reduce). Every row is written
(untouched rows get zeros), so the dense gradient needs no separate zero fill and a
poisoned buffer checks coverage.

Memory traffic per occurrence: perm + bag index (16 B), the id and the scale (4-8 + 4 B) when
scaled, one G row (4 D B) and one partner row (e D B, e = element size) when composed;
plus per row the CSR bounds (16 B), the write (e D B) and, with the dot, one read of T[r].
Limitation: a program walks its rows' contributions BLOCK_N at a time, so one very hot row
makes its program the tail (FBGEMM splits long segments; not done here).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import new_output, tile_sizes


@triton.jit
def _segment_grad_kernel(
    seg_ptr, perm_ptr, bag_ptr, ids_ptr, scale_ptr, inv_ptr,
    g_ptr, stride_g, oth_ptr, stride_oth, oth_idx_ptr,
    tab_ptr, stride_tab, dot_ptr, out_ptr, stride_out, R, D,
    HAS_SCALE: tl.constexpr, MEAN: tl.constexpr, HAS_OTHER: tl.constexpr, HAS_DOT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)  # (R_,)
    rmask = rows < R
    start = tl.load(seg_ptr + rows, mask=rmask, other=0)
    end = tl.load(seg_ptr + rows + 1, mask=rmask, other=0)
    max_cnt = tl.max(end - start, axis=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    acc = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    if HAS_DOT:  # this row of the table, read once for all its occurrences: (R_, 1, D_)
        t = tl.load(tab_ptr + rows[:, None] * stride_tab + cols[None, :],
                    mask=rmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)[:, None, :]
    for n0 in range(0, max_cnt, BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (R_, N_)
        pmask = pos < end[:, None]
        occ = tl.load(perm_ptr + pos, mask=pmask, other=0)
        bag = tl.load(bag_ptr + occ, mask=pmask, other=0)
        m3 = pmask[:, :, None] & cmask[None, None, :]
        g = tl.load(g_ptr + bag[:, :, None] * stride_g + cols[None, None, :], mask=m3, other=0.0).to(tl.float32)
        if MEAN:
            g = g * tl.load(inv_ptr + bag, mask=pmask, other=0.0)[:, :, None]
        if HAS_DOT:
            tl.store(dot_ptr + occ, tl.sum(g * t, axis=2), mask=pmask)
        if HAS_SCALE:
            ids = tl.load(ids_ptr + occ, mask=pmask, other=0)
            g = g * tl.load(scale_ptr + ids, mask=pmask, other=0.0).to(tl.float32)[:, :, None]
        if HAS_OTHER:
            oidx = tl.load(oth_idx_ptr + occ, mask=pmask, other=0)
            o = tl.load(oth_ptr + oidx[:, :, None] * stride_oth + cols[None, None, :], mask=m3, other=0.0)
            g = g * o.to(tl.float32)
        acc += tl.sum(g, axis=1)
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])


def segment_grad(
    seg: torch.Tensor,
    perm: torch.Tensor,
    bag: torch.Tensor,
    grad: torch.Tensor,
    out_dtype: torch.dtype,
    *,
    inv: Optional[torch.Tensor] = None,
    ids: Optional[torch.Tensor] = None,
    scale: Optional[torch.Tensor] = None,
    other: Optional[torch.Tensor] = None,
    other_idx: Optional[torch.Tensor] = None,
    table: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(R, D) gradient of the table whose rows ``seg`` (R+1,) indexes, and the per-occurrence
    dot (nnz,) fp32 when ``table`` is given (else None).

    grad (B, D) fp32 upstream gradient; inv (B,) fp32 for mean pooling; ids + scale for
    per-entity weights; other (rows, D) + other_idx (nnz,) for a multiplied partner row.
    """
    r, d = seg.numel() - 1, grad.shape[1]
    out = new_output((r, d), out_dtype, grad.device)
    dot = new_output((perm.numel(),), torch.float32, grad.device) if table is not None else None
    if r == 0 or d == 0:
        return out, dot
    block_r, block_n, block_d = tile_sizes(r, perm.numel(), d, full_width=table is not None)
    dummy = seg
    _segment_grad_kernel[(triton.cdiv(r, block_r), triton.cdiv(d, block_d))](
        seg, perm, bag,
        ids if ids is not None else dummy, scale if scale is not None else dummy,
        inv if inv is not None else dummy,
        grad, grad.stride(0),
        other if other is not None else dummy, other.stride(0) if other is not None else 0,
        other_idx if other_idx is not None else dummy,
        table if table is not None else dummy, table.stride(0) if table is not None else 0,
        dot if dot is not None else dummy,
        out, out.stride(0), r, d,
        HAS_SCALE=scale is not None, MEAN=inv is not None, HAS_OTHER=other is not None,
        HAS_DOT=table is not None, BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    return out, dot
