"""mixed_dim_bag in plain PyTorch, as the MDE reference computes it: project every id, then pool.

Block k owns virtual rows [block_offsets[k], block_offsets[k+1]) with table (n_k, d_k) and
projection (d_k, d) (None = identity, d_k == d). e(i) = tables[k][i - lo_k] @ P_k;
out[b] = sum (or mean) of e(i) over bag b. Computed in fp32, output in the tables' dtype.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from compactrec.kernels._common import bag_of, check_jagged, check_mode, lengths_of


def block_bounds(block_offsets, tables: Sequence[torch.Tensor], projections) -> List[int]:
    """Validate the block layout; returns block_offsets as K+1 python ints."""
    bo = [int(x) for x in (block_offsets.tolist() if torch.is_tensor(block_offsets) else block_offsets)]
    k = len(tables)
    if len(bo) != k + 1 or len(projections) != k or k == 0:
        raise ValueError(
            f"mixed_dim_bag: {k} tables, {len(projections)} projections, {len(bo)} block offsets (need K, K, K+1)"
        )
    for i, (t, p) in enumerate(zip(tables, projections)):
        if t.shape[0] != bo[i + 1] - bo[i]:
            raise ValueError(f"mixed_dim_bag: block {i} spans {bo[i + 1] - bo[i]} rows, its table has {t.shape[0]}")
        if p is not None and p.shape[0] != t.shape[1]:
            raise ValueError(f"mixed_dim_bag: block {i} table width {t.shape[1]} != projection rows {p.shape[0]}")
    return bo


def output_dim(tables: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> int:
    dims = {p.shape[1] if p is not None else t.shape[1] for t, p in zip(tables, projections)}
    if len(dims) != 1:
        raise ValueError(f"mixed_dim_bag: blocks project to different widths {sorted(dims)}")
    return dims.pop()


def mixed_dim_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    block_offsets,
    tables: Sequence[torch.Tensor],
    projections: Sequence[Optional[torch.Tensor]],
    mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,) virtual rows, offsets (B+1,) -> (B, d); per-id projection."""
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "mixed_dim_bag")
    bo = block_bounds(block_offsets, tables, projections)
    d = output_dim(tables, projections)
    ids = values.to(torch.int64)
    per_id = torch.zeros(ids.numel(), d, dtype=torch.float32, device=ids.device)
    for k, (t, p) in enumerate(zip(tables, projections)):
        where = torch.nonzero((ids >= bo[k]) & (ids < bo[k + 1])).view(-1)
        e = t.float()[ids[where] - bo[k]]  # (nnz_k, d_k)
        per_id = per_id.index_put((where,), e @ p.float() if p is not None else e)
    b = offsets.numel() - 1
    out = per_id.new_zeros((b, d)).index_add(0, bag_of(offsets, ids.numel()), per_id)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(tables[0].dtype)
