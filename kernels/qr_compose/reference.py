"""qr_compose_pool in plain PyTorch: compose each id's embedding from its looked-up rows, then pool.

q_rows, r_rows (nnz, d): the quotient and remainder rows of every id (q_table[i // m] and
r_table[i % m]), in bag order, as TorchRec's lookups return them; offsets (B+1,).
e_j = q_j * r_j ("mult") or q_j + r_j ("add"), composed per id BEFORE pooling (pooling each
table first is wrong for multi-hot "mult" bags: dlrm issue #366); out[b] = sum (or mean)
of e_j over bag b. fp32 compute, output in q_rows' dtype; gradients for both (nnz, d).
"""

from __future__ import annotations

import torch

from compactrec.kernels._common import bag_of, check_mode, check_rows, lengths_of
from compactrec.kernels.qr.reference import check_operation


def check_inputs(q_rows, r_rows, offsets, operation: str, mode: str):
    """Shared validation: returns (offsets int64, mult, mean)."""
    mult = check_operation(operation)
    mean = check_mode(mode)
    offsets = check_rows(q_rows, offsets, "qr_compose_pool", "q_rows")
    if r_rows.shape != q_rows.shape or not r_rows.dtype.is_floating_point:
        raise ValueError(f"qr_compose_pool: r_rows {r_rows.dtype} {tuple(r_rows.shape)} must be a float tensor "
                         f"shaped like q_rows {tuple(q_rows.shape)} (one remainder row per id)")
    return offsets, mult, mean


def qr_compose_pool(
    q_rows: torch.Tensor,
    r_rows: torch.Tensor,
    offsets: torch.Tensor,
    *,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """q_rows, r_rows (nnz, d), offsets (B+1,) -> (B, d)."""
    offsets, mult, mean = check_inputs(q_rows, r_rows, offsets, operation, mode)
    q, r = q_rows.float(), r_rows.float()
    e = q * r if mult else q + r  # (nnz, d): composed per id, before pooling
    b = offsets.numel() - 1
    out = e.new_zeros((b, q_rows.shape[1])).index_add(0, bag_of(offsets, q_rows.shape[0]), e)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(q_rows.dtype)
