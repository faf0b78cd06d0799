"""project_sum in Triton: one tiled kernel sums K projected / identity blocks and writes the output once.

A program owns a BLOCK_M x BLOCK_N tile of the (B, d) output and keeps it in fp32 registers
while it adds every block: a projected block k walks its d_k columns BLOCK_K at a time,
acc += x_k[rows, k0:k0+BLOCK_K] @ P_k[k0:k0+BLOCK_K, cols] (tl.dot; every tile dimension is
at least 16, the minimum tl.dot takes on a GPU, and the ragged edges are masked to zero);
an identity block adds x_k[rows, cols]. The tile is written once, in blocks[0]'s dtype.
Blocks come in slots of ``SLOTS`` per launch (each a pointer, a stride and a width; K is
small: mixed-dimension blocks, CAFE's hot table + hash levels); more blocks take more
launches that accumulate through an fp32 buffer. tl.dot runs natively (fp32 accumulate)
when every block and projection is the same 16-bit type, else on fp32 inputs with
input_precision="ieee" (TF32's 10-bit mantissa would miss the fp32 tolerance). Under the
CPU interpreter the native 16-bit dot is wrong (Triton 3.7.1's interpreter multiplies the
raw bf16 bit patterns: a 16x16 bf16 dot comes out ~1e10 off), so there the 16-bit blocks
take the fp32 path too; the native path is checked on the GPU (benchmarks/gpu_check.py).
Cost note: the "ieee" dot runs on FMA units, not tensor cores; at d = 128 and
sum d_k ~ d that is ~2*B*d*sum(d_k) flops against e*B*(sum d_k + d) bytes, about 30
flop/byte in fp32: near the H100/H200 FMA ridge, so an fp32 project_sum may be compute-
bound rather than memory-bound (``FP32_DOT = "tf32x3"`` would be the knob; not measured).
Backward: cuBLAS (torch matmuls): grad x_k = dout @ P_k^T (dout for identity) and
grad P_k = x_k^T @ dout, in fp32, each rounded once to its parameter's dtype.

Memory-traffic model (e = element size, B rows, d output width, K blocks of width d_k):
  forward   x_k read e*B*d_k (once per column tile: ceil(d / BLOCK_N) tiles, so once for
            d <= 128), P_k e*d_k*d per program (L2-resident), output write e*B*d
  backward  per projected block: dout read twice 2*e*B*d (+ its fp32 copy 4*B*d once),
            x_k read e*B*d_k, grad x_k write e*B*d_k, P_k and grad P_k e*d_k*d each;
            per identity block: grad x_k = dout (no traffic when the dtypes match)
Floor (forward): e*B*(sum_k d_k + d).
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import interpreting, new_output, next_pow2
from compactrec.kernels.projection.reference import check_blocks

FP32_DOT = tl.constexpr("ieee")  # input_precision of the fp32 dot (see the docstring); a jit global must be constexpr
SLOTS = 4  # blocks per launch (kernel arguments: pointer, stride, projection, its stride, d_k)
NONE, PROJECTED, IDENTITY = 0, 1, 2  # a slot's kind


@triton.jit
def _add_block(acc, x_ptr, stride_x, p_ptr, stride_p, DK, rows, rmask, cols, cmask,
               KIND: tl.constexpr, NATIVE_DOT: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc (M_, N_) fp32 + this slot's contribution to the output tile."""
    if KIND == 1:  # projected: acc += x[rows, :] @ P[:, cols], BLOCK_K columns of x at a time
        for k0 in range(0, DK, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            kmask = ks < DK
            x = tl.load(x_ptr + rows[:, None] * stride_x + ks[None, :], mask=rmask[:, None] & kmask[None, :],
                        other=0.0)
            p = tl.load(p_ptr + ks[:, None] * stride_p + cols[None, :], mask=kmask[:, None] & cmask[None, :],
                        other=0.0)
            if NATIVE_DOT:
                acc = tl.dot(x, p, acc)
            else:
                acc = tl.dot(x.to(tl.float32), p.to(tl.float32), acc, input_precision=FP32_DOT)
    elif KIND == 2:  # identity: d_k == d
        acc += tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                       other=0.0).to(tl.float32)
    return acc


@triton.jit
def _project_sum_kernel(
    out_ptr, stride_o, acc_ptr, stride_a, B, D,
    x0, sx0, p0, sp0, dk0, x1, sx1, p1, sp1, dk1, x2, sx2, p2, sp2, dk2, x3, sx3, p3, sp3, dk3,
    KIND0: tl.constexpr, KIND1: tl.constexpr, KIND2: tl.constexpr, KIND3: tl.constexpr,
    ACCUMULATE: tl.constexpr, NATIVE_DOT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)  # (M_,)
    rmask = rows < B
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < D
    omask = rmask[:, None] & cmask[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ACCUMULATE:  # the fp32 partial sum of earlier launches (more than SLOTS blocks)
        acc += tl.load(acc_ptr + rows[:, None] * stride_a + cols[None, :], mask=omask, other=0.0)
    acc = _add_block(acc, x0, sx0, p0, sp0, dk0, rows, rmask, cols, cmask, KIND0, NATIVE_DOT, BLOCK_K)
    acc = _add_block(acc, x1, sx1, p1, sp1, dk1, rows, rmask, cols, cmask, KIND1, NATIVE_DOT, BLOCK_K)
    acc = _add_block(acc, x2, sx2, p2, sp2, dk2, rows, rmask, cols, cmask, KIND2, NATIVE_DOT, BLOCK_K)
    acc = _add_block(acc, x3, sx3, p3, sp3, dk3, rows, rmask, cols, cmask, KIND3, NATIVE_DOT, BLOCK_K)
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


def _tiles(d: int, max_dk: int):
    """(BLOCK_M, BLOCK_N, BLOCK_K): tl.dot wants >= 16 in every dimension; one column tile up to d = 128."""
    return 64, max(16, min(128, next_pow2(d))), max(16, min(32, next_pow2(max_dk)))


def project_sum_fwd(blocks: Sequence[torch.Tensor], projs: Sequence[Optional[torch.Tensor]], d: int) -> torch.Tensor:
    """Launch the forward: (B, d) in blocks[0]'s dtype; ceil(K / SLOTS) launches."""
    b = blocks[0].shape[0]
    out = new_output((b, d), blocks[0].dtype, blocks[0].device)
    if b == 0 or d == 0:
        return out
    tensors = list(blocks) + [p for p in projs if p is not None]
    native = (tensors[0].dtype in (torch.bfloat16, torch.float16) and all(t.dtype == tensors[0].dtype for t in tensors)
              and not interpreting())  # the interpreter's 16-bit tl.dot is wrong (docstring)
    block_m, block_n, block_k = _tiles(d, max(x.shape[1] for x in blocks))
    groups = [list(range(i, min(i + SLOTS, len(blocks)))) for i in range(0, len(blocks), SLOTS)]
    # partial sums between launches stay fp32; only the last launch writes the output dtype
    acc = out if len(groups) == 1 or out.dtype == torch.float32 else new_output((b, d), torch.float32, out.device)
    for i, group in enumerate(groups):
        dst = out if i == len(groups) - 1 else acc
        args: List = []
        kinds: List[int] = []
        for k in group + [None] * (SLOTS - len(group)):
            if k is None:
                args += [dst, 0, dst, 0, 0]
                kinds.append(NONE)
            else:
                x, p = blocks[k], projs[k]
                args += [x, x.stride(0), p if p is not None else x, p.stride(0) if p is not None else 0, x.shape[1]]
                kinds.append(PROJECTED if p is not None else IDENTITY)
        _project_sum_kernel[(triton.cdiv(b, block_m), triton.cdiv(d, block_n))](
            dst, dst.stride(0), acc, acc.stride(0), b, d, *args,
            KIND0=kinds[0], KIND1=kinds[1], KIND2=kinds[2], KIND3=kinds[3],
            ACCUMULATE=i > 0, NATIVE_DOT=native, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        )
    return out


class _ProjectSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, has_proj, d, *params):
        k = len(has_proj)
        blocks, projs = params[:k], _expand(params[k:], has_proj)
        ctx.save_for_backward(*params)
        ctx.has_proj = has_proj
        return project_sum_fwd(blocks, projs, d)

    @staticmethod
    def backward(ctx, dout):
        params = ctx.saved_tensors
        has_proj = ctx.has_proj
        k = len(has_proj)
        blocks, projs = params[:k], _expand(params[k:], has_proj)
        need_x = ctx.needs_input_grad[2 : 2 + k]
        need_p = _expand(ctx.needs_input_grad[2 + k :], has_proj)
        g = dout.float()  # (B, d): every product accumulates in fp32 (cuBLAS on CUDA)
        grads_x, grads_p = [], []
        for i, (x, p) in enumerate(zip(blocks, projs)):
            if not need_x[i]:
                grads_x.append(None)
            elif p is None:
                grads_x.append(dout if dout.dtype == x.dtype else g.to(x.dtype))  # d out / d x = I
            else:
                grads_x.append((g @ p.float().t()).to(x.dtype))
            if p is not None:
                grads_p.append((x.float().t() @ g).to(p.dtype) if need_p[i] else None)
        return (None, None, *grads_x, *grads_p)


def _expand(present, has_proj):
    """The non-None projections back in block order, None where a block is identity."""
    it = iter(present)
    return [next(it) if h else None for h in has_proj]


def project_sum(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """K blocks (B, d_k), K projections (d_k, d) or None -> (B, d)."""
    d = check_blocks(blocks, projections)
    has_proj = tuple(p is not None for p in projections)
    blocks = [x if x.stride(-1) == 1 else x.contiguous() for x in blocks]
    projs = [p if p.stride(-1) == 1 else p.contiguous() for p in projections if p is not None]
    return _ProjectSum.apply(has_proj, d, *blocks, *projs)
