"""qr_bag in plain PyTorch: compose each id's embedding, then pool (the oracle).

e(i) = q_table[i // m] * r_table[i % m]   ("mult")   or   q_table[i // m] + r_table[i % m]   ("add"),
m = collisions; out[b] = sum (or mean) of e(i) over bag b. The dlrm reference pools each
table over the bag first and combines afterwards, which is wrong for multi-hot "mult" bags
(dlrm issue #366): composing per id is the point of this op. fp32 compute, table dtype out.
"""

from __future__ import annotations

import torch

from compactrec.kernels._common import bag_of, check_jagged, check_mode, lengths_of

OPERATIONS = ("mult", "add")


def check_operation(operation: str) -> bool:
    """Validate ``operation``; returns True for "mult"."""
    if operation not in OPERATIONS:
        raise ValueError(f"operation={operation!r}: expected one of {OPERATIONS}")
    return operation == "mult"


def qr_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    q_table: torch.Tensor,
    r_table: torch.Tensor,
    *,
    collisions: int,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """values (nnz,) ids, offsets (B+1,), q_table (ceil(N/m), d), r_table (m, d) -> (B, d)."""
    mult = check_operation(operation)
    mean = check_mode(mode)
    offsets = check_jagged(values, offsets, "qr_bag")
    ids = values.to(torch.int64)
    q, r = q_table.float()[ids // collisions], r_table.float()[ids % collisions]
    e = q * r if mult else q + r  # (nnz, d): composed per id, before pooling
    b = offsets.numel() - 1
    out = e.new_zeros((b, q_table.shape[1])).index_add(0, bag_of(offsets, ids.numel()), e)
    if mean:
        out = out / lengths_of(offsets).clamp(min=1)[:, None]
    return out.to(q_table.dtype)
