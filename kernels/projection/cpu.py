"""project_sum on native ops: the identity blocks added, then one GEMM-accumulate per projected block.

out = sum of the identity blocks (CAFE's hot and hash-level outputs, mixed-dim's full-width
blocks), then out = addmm(out, x_k, P_k) per projected block: BLAS adds each product into the
running sum (beta = 1), so no (B, d) temporary per block, and a block that is a column view of a
wider tensor (mixed-dim's run of projected blocks in the EBC's output) is read in place, where
concatenating the blocks for one GEMM copied them. Autograd supplies the gradients. Device-
agnostic; compute in fp32 (as the reference), output in blocks[0]'s dtype.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from compactrec.kernels.projection.reference import check_blocks


def project_sum(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """K blocks (B, d_k), K projections (d_k, d) or None -> (B, d)."""
    check_blocks(blocks, projections)
    out = None
    for x, p in zip(blocks, projections):  # identity blocks first: the sum addmm accumulates into
        if p is None:
            out = x.float() if out is None else out + x.float()
    for x, p in zip(blocks, projections):
        if p is not None:
            out = x.float() @ p.float() if out is None else torch.addmm(out, x.float(), p.float())
    if out is blocks[0]:  # a lone fp32 identity block: never hand back the input itself
        out = out.clone()
    return out.to(blocks[0].dtype)
