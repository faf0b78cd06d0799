"""project_sum on native ops: ONE GEMM for all projected blocks, plus the identity adds.

The projected blocks are concatenated, cat(x_k) (B, sum d_k) @ cat(P_k) (sum d_k, d): a single
GEMM (the BLAS call with the best shape) instead of K thin ones and K-1 (B, d) adds; the
identity blocks (CAFE's hot and hash-level outputs) are added in fp32. Autograd supplies the
gradients (the GEMM's, split back per block by cat's backward). Device-agnostic; compute in
fp32 (as the reference), output in blocks[0]'s dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from compactrec.kernels.projection.reference import check_blocks


def project_sum(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """K blocks (B, d_k), K projections (d_k, d) or None -> (B, d)."""
    check_blocks(blocks, projections)
    projected = [(x, p) for x, p in zip(blocks, projections) if p is not None]
    identity = [x for x, p in zip(blocks, projections) if p is None]
    out = None
    if projected:
        xs = [x.float() for x, _ in projected]
        ps = [p.float() for _, p in projected]
        out = (xs[0] if len(xs) == 1 else torch.cat(xs, 1)) @ (ps[0] if len(ps) == 1 else torch.cat(ps, 0))
    for x in identity:
        out = x.float() if out is None else out + x.float()
    if out is blocks[0]:  # a lone fp32 identity block: never hand back the input itself
        out = out.clone()
    return out.to(blocks[0].dtype)
