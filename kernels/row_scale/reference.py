"""scale_pool in plain PyTorch: the oracle the Triton and CPU paths are tested against.

rows (nnz, d) are the rows TorchRec looked up, one per id in bag order; offsets (B+1,);
e_j = scale_j * rows_j + bias_j (the bias broadcast over the d columns), out[b] = sum (or
mean) of e_j over bag b; an empty bag gives 0. Computed in fp32, output in the rows' dtype;
autograd gives the rows, scale and bias gradients (in their own dtypes and shapes).
"""

from __future__ import annotations

from typing import Optional

import torch

from compactrec.kernels._common import bag_of, check_mode, check_per_id, check_rows, lengths_of


def check_inputs(rows, offsets, scale, bias, mode: str):
    """Shared validation: returns (offsets int64, mean)."""
    mean = check_mode(mode)
    offsets = check_rows(rows, offsets, "scale_pool")
    check_per_id(scale, rows.shape[0], "scale_pool", "scale")
    check_per_id(bias, rows.shape[0], "scale_pool", "bias")
    return offsets, mean


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
    e = rows.float()
    if scale is not None:
        e = e * scale.float().view(-1, 1)
    if bias is not None:
        e = e + bias.float().view(-1, 1)
    b = offsets.numel() - 1
    out = e.new_zeros((b, rows.shape[1])).index_add(0, bag_of(offsets, rows.shape[0]), e)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(rows.dtype)
