"""scale_pool on native ops: the fast path on CPU (device-agnostic torch, FBGEMM inside).

Forward: fp32 rows pool in one ``F.embedding_bag`` over ``arange(nnz)`` with the per-id
weights ``scale_j`` (``/len`` for mean) as ``per_sample_weights``: on CPU that is FBGEMM's
pooled kernel, one pass over the rows, no (nnz, d) intermediate. Other dtypes (bf16) are
pooled in fp32 by chunks (``pool_rows``) so nothing is rounded before the output. The bias
is a scatter-add of nnz scalars into the bags, broadcast over the columns.
Backward (a hand-written autograd Function, in cache-sized chunks of ids):
  grad_rows[j]  = w_j * dout[bag_j]            (a gather of dout rows, scaled; (nnz, d))
  grad_scale[j] = <rows_j, dout[bag_j]> / len  (while the gathered dout chunk is in cache)
  grad_bias[j]  = sum_c dout[bag_j, c] / len   (one row sum per bag, gathered per id)
All of it is proportional to the batch (nnz x d), never to a table.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from compactrec.kernels._common import bag_of, inv_lengths
from compactrec.kernels.row_scale.reference import check_inputs

_CHUNK = 4096  # ids per chunk: a few (4096, d) fp32 buffers stay in L2


def one_hot(offsets: torch.Tensor, nnz: int) -> bool:
    """Every bag holds exactly one id (the common case: Criteo's features are one-hot). Then
    bag j is id j and pooling is the identity: the composition alone, through plain autograd,
    beats any scatter. A host check, fine on this path (CPU tensors; on CUDA, ``auto`` takes
    the Triton path and this is never asked)."""
    b = offsets.numel() - 1
    if nnz != b or offsets.is_cuda:
        return False
    return bool(torch.equal(offsets, torch.arange(b + 1, dtype=offsets.dtype, device=offsets.device)))


def pool_rows(rows: torch.Tensor, offsets: torch.Tensor, bags: torch.Tensor,
              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """(B, d) fp32: sum over bag b of weights_j * rows_j (weights (nnz,) fp32 or None)."""
    b, (nnz, d) = offsets.numel() - 1, rows.shape
    if rows.dtype == torch.float32:
        each = torch.arange(nnz, device=rows.device)
        return F.embedding_bag(each, rows, offsets, mode="sum", per_sample_weights=weights,
                               include_last_offset=True)
    out = torch.zeros(b, d, dtype=torch.float32, device=rows.device)
    for s in range(0, nnz, _CHUNK):
        e = rows[s : s + _CHUNK].float()  # a copy: rows are not fp32 here
        if weights is not None:
            e.mul_(weights[s : s + _CHUNK, None])
        out.index_add_(0, bags[s : s + _CHUNK], e)
    return out


class _ScalePoolCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, offsets, scale, bias, mean):
        nnz = rows.shape[0]
        bags = bag_of(offsets, nnz)
        inv = inv_lengths(offsets) if mean else None
        w = scale.reshape(-1).float() if scale is not None else None  # (nnz,)
        if mean:
            w = inv[bags] if w is None else w * inv[bags]
        out = pool_rows(rows, offsets, bags, w)  # (B, d) fp32
        if bias is not None:
            pb = torch.zeros(offsets.numel() - 1, dtype=torch.float32, device=rows.device)
            pb.index_add_(0, bags, bias.reshape(-1).float())
            out += (pb * inv if mean else pb)[:, None]  # the bias adds to every column
        ctx.save_for_backward(rows, offsets, bags, scale, bias)
        ctx.mean = mean
        return out.to(rows.dtype)

    @staticmethod
    def backward(ctx, dout):
        rows, offsets, bags, scale, bias = ctx.saved_tensors
        need_r, need_s, need_b = ctx.needs_input_grad[0], ctx.needs_input_grad[2], ctx.needs_input_grad[3]
        g = dout.float()
        if ctx.mean:
            g = g * inv_lengths(offsets)[:, None]  # (B, d): 1/len folded in once per bag
        g = g.contiguous()
        nnz = rows.shape[0]
        grad_r = torch.empty_like(rows) if need_r else None
        dots = torch.empty(nnz, dtype=torch.float32, device=g.device) if need_s else None
        w = scale.reshape(-1).float() if scale is not None else None
        if need_r or need_s:
            for s in range(0, nnz, _CHUNK):
                gb = g.index_select(0, bags[s : s + _CHUNK])  # (chunk, d) fp32
                if need_s:
                    # not in place: .float() of fp32 rows is the caller's tensor
                    torch.sum(rows[s : s + _CHUNK].float() * gb, 1, out=dots[s : s + _CHUNK])
                if need_r:
                    if w is not None:
                        gb.mul_(w[s : s + _CHUNK, None])
                    grad_r[s : s + _CHUNK].copy_(gb)
        grad_s = dots.to(scale.dtype).view_as(scale) if need_s else None
        grad_b = g.sum(1).index_select(0, bags).to(bias.dtype).view_as(bias) if need_b else None
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
    if one_hot(offsets, rows.shape[0]):  # mean of one id = sum
        out = rows.float() if scale is None else rows.float() * scale.reshape(-1, 1).float()
        if bias is not None:
            out = out + bias.reshape(-1, 1).float()
        return out.to(rows.dtype)
    return _ScalePoolCPU.apply(rows, offsets, scale, bias, mean)
