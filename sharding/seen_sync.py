"""``reserve_unseen`` across ranks: every rank's seen-id bits OR-ed together.

Each rank marks the ids of its own batches in its ``SeenIds`` (``embeddings/seen.py``); the
bits are a plain buffer, which DMP neither shards nor broadcasts. Without a merge, an id that
rank 1 trained is "never seen" on rank 0: rank 0 evaluates it on the reserved untrained row,
and rank 0's checkpoint keeps only its own bits. ``sync_seen(model)`` ORs the bits of every
``SeenIds`` in ``model`` over the process group; the train loop calls it before every eval
and every checkpoint, so evals and checkpoints see the ids that ANY rank trained.

Gloo reduces int64 with ``BOR`` directly. NCCL has no bitwise reductions: each chunk of
words is unpacked to one byte per bit, reduced with ``MAX`` (OR of 0/1) and packed again,
one ``all_reduce`` per chunk (64x the chunk in bytes, bounded by ``CHUNK_WORDS``).

Example::

    n = sync_seen(dmp_model)          # collective; returns the SeenIds modules merged
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from compactrec.embeddings.seen import WORD_BITS, SeenIds

CHUNK_WORDS = 1 << 20  # 64 MB of unpacked bytes per all_reduce on NCCL


def _shifts(device: torch.device) -> torch.Tensor:
    return torch.arange(WORD_BITS, dtype=torch.int64, device=device)


@torch.no_grad()
def or_across_ranks(bits: torch.Tensor, pg: Optional[dist.ProcessGroup] = None, planes: Optional[bool] = None) -> None:
    """``bits`` (words,) int64 <- the OR of every rank's ``bits``, in place. Collective.
    ``planes``: unpack-and-MAX (NCCL's way; default: only when the backend is NCCL)."""
    if not dist.is_initialized() or dist.get_world_size(pg) == 1 or bits.numel() == 0:
        return
    if planes is None:
        planes = dist.get_backend(pg) == "nccl"
    if not planes:
        dist.all_reduce(bits, op=dist.ReduceOp.BOR, group=pg)
        return
    shifts = _shifts(bits.device)
    for start in range(0, bits.numel(), CHUNK_WORDS):
        words = bits[start : start + CHUNK_WORDS]
        unpacked = torch.bitwise_and(torch.bitwise_right_shift(words.unsqueeze(1), shifts), 1).to(torch.uint8)
        dist.all_reduce(unpacked, op=dist.ReduceOp.MAX, group=pg)
        # distinct powers of two: their sum is their OR (bit 63 wraps to the sign bit exactly)
        words.copy_(torch.bitwise_left_shift(unpacked.to(torch.int64), shifts).sum(1))


def sync_seen(model: nn.Module, pg: Optional[dist.ProcessGroup] = None) -> int:
    """OR the bits of every ``SeenIds`` in ``model`` over the ranks (collective: every rank
    calls it with the same model). Returns how many were merged."""
    found = [m for m in model.modules() if isinstance(m, SeenIds)]
    for m in found:
        or_across_ranks(m.bits, pg)
    return len(found)


def seen_count(model: nn.Module) -> int:
    """Ids marked in every ``SeenIds`` of ``model`` (a popcount, 64 passes over the bits)."""
    total = 0
    for m in model.modules():
        if isinstance(m, SeenIds):
            for b in range(WORD_BITS):
                total += int(torch.bitwise_and(torch.bitwise_right_shift(m.bits, b), 1).sum())
    return total
