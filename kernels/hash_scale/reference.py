"""hash_scale_bag in plain PyTorch: the oracle the Triton and CPU paths are tested against.

e(i) = scale[i] * table[h(i)] + bias[i],  h(i) = hash_mod(i, m, seed) if hashed else i,
out[b] = sum (or mean) of e(i) over bag b; an empty bag gives 0.
Computed per id in fp32 (so bf16 tables accumulate in fp32), output in the table dtype;
autograd gives the table, scale and bias gradients (in their own dtypes).
"""

from __future__ import annotations

from typing import Optional

import torch

from compactrec.hashing import hash_mod
from compactrec.kernels._common import bag_of, check_jagged, check_mode, lengths_of


def hash_scale_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    table: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    num_rows: Optional[int] = None,
    seed: int = 0,
    hashed: bool = True,
    mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,) ids, offsets (B+1,), table (m, d), scale/bias (>= max id + 1,) -> (B, d)."""
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "hash_scale_bag")
    ids = values.to(torch.int64)
    m = table.shape[0] if num_rows is None else num_rows
    rows = hash_mod(ids, m, seed) if hashed else ids
    e = table.float()[rows]  # (nnz, d)
    if scale is not None:
        e = e * scale.float()[ids][:, None]  # scale separates ids that share a hashed row
    if bias is not None:
        e = e + bias.float()[ids][:, None]
    b = offsets.numel() - 1
    out = e.new_zeros((b, table.shape[1])).index_add(0, bag_of(offsets, ids.numel()), e)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(table.dtype)
