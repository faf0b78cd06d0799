"""robe_bag on native ops: the fast path on CPU (device-agnostic torch, FBGEMM inside).

Sum pooling commutes with the concatenation of chunks: pooled chunk c of bag b is the sum over
the bag's ids of M[o(x_j, c)]. So the (B, d) output is B * nb "sub-bags" of width Z, and one
``F.embedding_bag`` over the (R, Z) array computes them when its indices are ordered
(bag, chunk, id): FBGEMM's pooled kernel, no (nnz, d) intermediate.
Backward (a hand-written autograd Function): the array gradient is the transposed bag
(``_common.transposed_bag``): occurrences (id, chunk) sorted by row, the upstream gradient of
their sub-bag pooled per row, every row written once (zeros where untouched).
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

from compactrec.kernels._common import bag_of, inv_lengths, lengths_of, transposed_bag
from compactrec.kernels.robe.reference import check_inputs, robe_rows  # noqa: F401  (robe_rows: the cpu op)


def sub_bags(offsets: torch.Tensor, nnz: int, nb: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (bag, chunk) sub-bags: (sub (nnz, nb) sub-bag of each occurrence, pos (nnz, nb) its
    place in (bag, chunk, id) order, sub_offsets (B * nb + 1,))."""
    lengths, start = lengths_of(offsets), offsets[:-1]
    bags = bag_of(offsets, nnz)
    c = torch.arange(nb, dtype=torch.int64, device=offsets.device)
    sub = bags[:, None] * nb + c[None, :]
    within = torch.arange(nnz, dtype=torch.int64, device=offsets.device) - start[bags]
    pos = (start[bags] * nb + within)[:, None] + c[None, :] * lengths[bags][:, None]
    sub_offsets = torch.cat([(start[:, None] * nb + c[None, :] * lengths[:, None]).reshape(-1),
                             offsets.new_full((1,), nnz * nb)])
    return sub, pos, sub_offsets


class _RobeBagCPU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, rows, offsets, array, mean):
        nnz, nb = rows.shape
        b, z = offsets.numel() - 1, array.shape[1]
        sub, pos, sub_offsets = sub_bags(offsets, nnz, nb)
        ordered = torch.empty(nnz * nb, dtype=torch.int64, device=rows.device)
        ordered[pos.reshape(-1)] = rows.reshape(-1)
        out = F.embedding_bag(ordered, array, sub_offsets, mode="sum", include_last_offset=True)  # (B*nb, Z)
        if mean:
            out = out * inv_lengths(offsets).repeat_interleave(nb)[:, None].to(out.dtype)
        ctx.save_for_backward(rows, offsets, sub)
        ctx.cfg = (mean, array.shape[0], array.dtype)
        return out.reshape(b, nb * z)

    @staticmethod
    def backward(ctx, dout):
        rows, offsets, sub = ctx.saved_tensors
        mean, num_rows, dtype = ctx.cfg
        if not ctx.needs_input_grad[2]:
            return None, None, None, None
        nb = rows.shape[1]
        g = dout.float().reshape(-1, dout.shape[1] // nb)  # (B * nb, Z): row b * nb + c is chunk c of bag b
        if mean:
            g = g * inv_lengths(offsets).repeat_interleave(nb)[:, None]
        grad = transposed_bag(rows.reshape(-1), sub.reshape(-1), g, num_rows).to(dtype)
        return None, None, grad, None


def robe_bag(
    values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor, array: torch.Tensor, *,
    dim: int, mult_id: int, mult_block: int, mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,), offsets (B+1,), bases (nnz,), array (R, Z) -> (B, dim)."""
    offsets, mean, nb = check_inputs(values, offsets, bases, array, dim, mode)
    rows = robe_rows(values, bases, num_blocks=nb, num_rows=array.shape[0], mult_id=mult_id, mult_block=mult_block)
    return _RobeBagCPU.apply(rows, offsets, array, mean)
