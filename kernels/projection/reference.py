"""project_sum in plain PyTorch: project every pooled block to the common width and add them up.

blocks[k] (B, d_k) pooled outputs (per block of a mixed-dimension table, or CAFE's hot
table and each hash level); projections[k] (d_k, d), or None for identity (then d_k == d).
out = sum_k blocks[k] @ P_k (+ blocks[k] for identity) -> (B, d). Pooling commutes with the
projection, so pooling each block first (TorchRec does) and projecting the (B, d_k) sums
gives mixed_dim_bag's per-id-projected answer with B rows of GEMM instead of nnz.
fp32 compute, output in blocks[0]'s dtype; gradients for every block and projection.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch


def check_blocks(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> int:
    """Validate the blocks and projections; returns the output width d."""
    blocks, projections = list(blocks), list(projections)
    if not blocks or len(blocks) != len(projections):
        raise ValueError(f"project_sum: {len(blocks)} blocks and {len(projections)} projections "
                         "(need K >= 1 of each; None for an identity block)")
    b = blocks[0].shape[0] if blocks[0].dim() == 2 else None
    widths = set()
    for k, (x, p) in enumerate(zip(blocks, projections)):
        if x.dim() != 2 or not x.dtype.is_floating_point or x.shape[0] != b:
            raise ValueError(f"project_sum: block {k} is {x.dtype} {tuple(x.shape)}; every block must be a 2-D "
                             f"float tensor (B, d_k) with the same B (block 0 has {tuple(blocks[0].shape)})")
        if p is None:
            widths.add(x.shape[1])
        elif p.dim() != 2 or not p.dtype.is_floating_point or p.shape[0] != x.shape[1]:
            raise ValueError(f"project_sum: projection {k} is {p.dtype} {tuple(p.shape)}; block {k} is "
                             f"{tuple(x.shape)}, so it must be a 2-D float tensor ({x.shape[1]}, d)")
        else:
            widths.add(p.shape[1])
    if len(widths) != 1:
        raise ValueError(f"project_sum: blocks project to different widths {sorted(widths)} (an identity block "
                         "keeps its own width d_k, so it must equal d)")
    return widths.pop()


def project_sum(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """K blocks (B, d_k), K projections (d_k, d) or None -> (B, d)."""
    check_blocks(blocks, projections)
    out = None
    for x, p in zip(blocks, projections):
        term = x.float() @ p.float() if p is not None else x.float()
        out = term if out is None else out + term
    if out is blocks[0]:  # a lone fp32 identity block: never hand back the input itself
        out = out.clone()
    return out.to(blocks[0].dtype)
