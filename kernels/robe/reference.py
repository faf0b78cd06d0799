"""robe_bag in plain PyTorch: the oracle the CPU and Triton paths are tested against.

ROBE (Desai, Chou, Shrivastava, MLSys 2022) reads the embedding of id x of feature e, width d,
as d / Z chunks of Z consecutive values of one shared array M. The array is stored as a table
of R = |M| / Z rows of width Z, and chunk c of id x is row
    o(x, c) = ((base_e + B (x mod P) + C c) mod P) mod R,     base_e = (A e + D) mod P,
the paper's hash ((A e + B x + C c + D) mod P) mod |M| with offsets restricted to multiples of
Z (a chunk is one whole row, so the circular wrap never splits a chunk and DMP can shard the
array row-wise like any table). P = 2^31 - 1 (a Mersenne prime); every product is below 2^62,
so int64 arithmetic is exact. The per-id ``bases`` carry the feature's constant, so a batch of
several features is one call; ``identity`` test mode uses base_e = the feature's first row,
B = d / Z, C = 1 (disjoint rows while start + N d / Z <= R).

out[b] = sum (or mean) over the ids j of bag b of concat_c M[o(x_j, c)]; an empty bag gives 0.
fp32 accumulation, output in the array's dtype; autograd gives the (R, Z) array gradient.
"""

from __future__ import annotations

import torch

from compactrec.kernels._common import bag_of, check_jagged, check_mode, lengths_of

P = 2**31 - 1  # the prime of the universal hash; the array has at most P rows


def check_inputs(values, offsets, bases, array, dim: int, mode: str):
    """Shared validation: returns (offsets int64, mean, num_blocks)."""
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "robe_bag")
    if array.dim() != 2 or not array.dtype.is_floating_point:
        raise ValueError(f"robe_bag: array must be a 2-D float tensor (rows, Z), got {array.dtype} {tuple(array.shape)}")
    z = array.shape[1]
    if z < 1 or dim % z:
        raise ValueError(f"robe_bag: dim {dim} is not a multiple of the block size Z = {z}")
    if array.shape[0] > P:
        raise ValueError(f"robe_bag: {array.shape[0]} rows exceed the hash prime P = {P}")
    if bases.shape != values.shape or bases.dtype != torch.int64:
        raise ValueError(f"robe_bag: bases must be int64 shaped like values {tuple(values.shape)}, got "
                         f"{bases.dtype} {tuple(bases.shape)}")
    return offsets, mean, dim // z


def robe_rows(values: torch.Tensor, bases: torch.Tensor, *, num_blocks: int, num_rows: int,
              mult_id: int, mult_block: int) -> torch.Tensor:
    """values (nnz,) ids >= 0, bases (nnz,) int64 in [0, P) -> rows (nnz, num_blocks) int64 in [0, num_rows)."""
    x = values.to(torch.int64) % P
    c = torch.arange(num_blocks, dtype=torch.int64, device=values.device) * mult_block % P  # (nb,)
    h = (bases + x * mult_id % P)[:, None] + c[None, :]  # (nnz, nb), < 2P
    return h % P % num_rows


def robe_bag(
    values: torch.Tensor, offsets: torch.Tensor, bases: torch.Tensor, array: torch.Tensor, *,
    dim: int, mult_id: int, mult_block: int, mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,), offsets (B+1,), bases (nnz,), array (R, Z) -> (B, dim)."""
    offsets, mean, nb = check_inputs(values, offsets, bases, array, dim, mode)
    rows = robe_rows(values, bases, num_blocks=nb, num_rows=array.shape[0], mult_id=mult_id, mult_block=mult_block)
    nnz = values.numel()
    e = array[rows.reshape(-1)].float().reshape(nnz, dim)  # chunks of one id side by side
    out = e.new_zeros((offsets.numel() - 1, dim)).index_add(0, bag_of(offsets, nnz), e)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(array.dtype)
