"""robe_bag in Triton: fused hash -> gather chunks -> pool, and the ROBE row hash on its own.

Forward: a program owns BLOCK_B bags and BLOCK_D columns; column k of the output is element
k % Z of chunk k // Z, so for each id it hashes (base, id, chunk) in registers (``robe_hash``,
the reference's formula, int64 throughout), gathers that array element, accumulates in fp32
and writes each pooled row once. The hash is recomputed per column (Z times per chunk):
a few integer ops against one scattered load, cheaper than a round trip through memory.
Backward: the rows of every (id, chunk) occurrence (``robe_rows``), one stable sort, and the
sorted segment reduction of ``kernels/_segment.py`` over the (B * nb, Z) view of the upstream
gradient (each sub-bag = one chunk of one bag): deterministic, no atomics, every array row
written once.

Memory-traffic model (e = array element size, d = dim, nb = d / Z, nnz ids, B bags):
  forward   per id: id 8 + base 8 + d array elements e*d (nb contiguous runs of Z);
            per bag: offsets 16 + output e*d
  backward  per occurrence (nnz * nb): row 8 write + sort ~40 + perm + sub-bag 16 + upstream
            chunk 4*Z; per array row (all R): CSR bounds 16 + gradient write e*Z
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import bag_of, inv_lengths, new_output, sort_segments, tile_sizes
from compactrec.kernels._segment import segment_grad
from compactrec.kernels.robe.reference import check_inputs


@triton.jit
def robe_hash(ids, bases, blocks, m, mult_id, mult_block):
    """((base + B (x mod P) + C c) mod P) mod m, int64; broadcastable int tensors in."""
    P: tl.constexpr = 2147483647
    x = ids.to(tl.int64) % P
    h = bases.to(tl.int64) + (x * mult_id) % P + (blocks.to(tl.int64) * mult_block) % P
    return (h % P) % m


@triton.jit
def _robe_rows_kernel(values_ptr, bases_ptr, out_ptr, n, m, mult_id, mult_block,
                      NB: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # flat (id, chunk) index
    mask = offs < n * NB
    j = offs // NB
    ids = tl.load(values_ptr + j, mask=mask, other=0)
    base = tl.load(bases_ptr + j, mask=mask, other=0)
    tl.store(out_ptr + offs, robe_hash(ids, base, offs % NB, m, mult_id, mult_block), mask=mask)


@triton.jit
def _robe_bag_fwd_kernel(
    values_ptr, bases_ptr, offsets_ptr, array_ptr, out_ptr, B, D, m, mult_id, mult_block, stride_a, stride_o,
    Z: tl.constexpr, MEAN: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):
    bags = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)  # (B_,)
    bmask = bags < B
    start = tl.load(offsets_ptr + bags, mask=bmask, other=0)
    end = tl.load(offsets_ptr + bags + 1, mask=bmask, other=0)
    cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    cmask = cols < D
    chunk = (cols // Z)[None, None, :]  # (1, 1, D_)
    within = (cols % Z)[None, None, :]
    acc = tl.zeros((BLOCK_B, BLOCK_D), dtype=tl.float32)
    for n0 in range(0, tl.max(end - start, axis=0), BLOCK_N):
        pos = start[:, None] + n0 + tl.arange(0, BLOCK_N)[None, :]  # (B_, N_)
        pmask = pos < end[:, None]
        ids = tl.load(values_ptr + pos, mask=pmask, other=0)
        base = tl.load(bases_ptr + pos, mask=pmask, other=0)
        rows = robe_hash(ids[:, :, None], base[:, :, None], chunk, m, mult_id, mult_block)  # (B_, N_, D_)
        t = tl.load(array_ptr + rows * stride_a + within, mask=pmask[:, :, None] & cmask[None, None, :],
                    other=0.0).to(tl.float32)
        acc += tl.sum(t, axis=1)
    if MEAN:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)[:, None]
    tl.store(out_ptr + bags[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=bmask[:, None] & cmask[None, :])


def robe_rows(values: torch.Tensor, bases: torch.Tensor, *, num_blocks: int, num_rows: int,
              mult_id: int, mult_block: int) -> torch.Tensor:
    """values (nnz,), bases (nnz,) int64 -> rows (nnz, num_blocks) int64, bit for bit the reference."""
    values, bases = values.contiguous(), bases.contiguous()
    out = new_output((values.numel(), num_blocks), torch.int64, values.device)
    if out.numel():
        block = 1024
        _robe_rows_kernel[(triton.cdiv(out.numel(), block),)](
            values, bases, out, values.numel(), num_rows, mult_id, mult_block, NB=num_blocks, BLOCK=block)
    return out


class _RobeBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, offsets, bases, array, dim, mult_id, mult_block, mean):
        b = offsets.numel() - 1
        out = new_output((b, dim), array.dtype, array.device)
        ctx.save_for_backward(values, offsets, bases)
        ctx.cfg = (dim, mult_id, mult_block, mean, array.shape, array.dtype)
        if b == 0 or dim == 0:
            return out
        block_b, block_n, block_d = tile_sizes(b, values.numel(), dim)
        _robe_bag_fwd_kernel[(triton.cdiv(b, block_b), triton.cdiv(dim, block_d))](
            values, bases, offsets, array, out, b, dim, array.shape[0], mult_id, mult_block,
            array.stride(0), out.stride(0), Z=array.shape[1], MEAN=mean,
            BLOCK_B=block_b, BLOCK_N=block_n, BLOCK_D=block_d,
        )
        return out

    @staticmethod
    def backward(ctx, dout):
        values, offsets, bases = ctx.saved_tensors
        dim, mult_id, mult_block, mean, (num_rows, z), dtype = ctx.cfg
        if not ctx.needs_input_grad[3]:
            return (None,) * 8
        nb, nnz = dim // z, values.numel()
        rows = robe_rows(values, bases, num_blocks=nb, num_rows=num_rows, mult_id=mult_id, mult_block=mult_block)
        perm, seg = sort_segments(rows.reshape(-1), num_rows)
        # occurrence (j, c) reads row j*nb + c of rows; its sub-bag (bag, chunk) is bag_j * nb + c
        sub = (bag_of(offsets, nnz)[:, None] * nb + torch.arange(nb, device=values.device)[None, :]).reshape(-1)
        g = dout.float().contiguous().view(-1, z)  # (B * nb, Z)
        inv = inv_lengths(offsets).repeat_interleave(nb) if mean else None
        grad, _ = segment_grad(seg, perm, sub, g, dtype, inv=inv)
        return None, None, None, grad, None, None, None, None


def robe_bag(
    values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor, array: torch.Tensor, *,
    dim: int, mult_id: int, mult_block: int, mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,), offsets (B+1,), bases (nnz,), array (R, Z) -> (B, dim)."""
    offsets, mean, _ = check_inputs(values, offsets, bases, array, dim, mode)
    array = array if array.stride(-1) == 1 else array.contiguous()
    return _RobeBag.apply(values.contiguous(), offsets, bases.contiguous(), array, dim, mult_id, mult_block, mean)
