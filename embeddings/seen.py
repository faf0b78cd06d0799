"""Which ids has training looked up? One bit per id of every compressed feature.

A full table gives an id that training never saw its own untrained row: near 0 (TorchRec's
U(+-sqrt(1/N)) init), a neutral input. A compressed table gives it a SHARED row that other
ids trained: hashing, QR and CAFE's hash part hand a new user or flight somebody else's
embedding. With a time split that is most of the loss (MovieLens-100K: 87% of test rows
have an id train never saw; on the 13% without one, hash / QR at 10x match the full table,
docs/quality.md). ``SeenIds`` restores the full table's behaviour for the price of N bits:
a training forward marks the ids it looks up (before the lookup, so a trained id is always
marked), and every forward routes unmarked ids to a reserved row that no training id uses:
it starts at 0 (``embeddings/reserved.py``) and stays 0. Unset (the default), the factory turns
it on while the bits fit ``AUTO_BUDGET_SHARE`` of the budget.

The bits live in a persistent int64 buffer over the global id space (local id + the
feature's offset), so checkpoints keep them. Under DMP each rank marks the ids of its own
batches (TorchRec's data-parallel wrapper does not broadcast buffers); the train loop ORs
every rank's bits before each eval and checkpoint (``sharding/seen_sync.py``), so an id any
rank trained is known to all there.

Example::

    seen = SeenIds([943, 1682])             # two compressed features
    g = seen.global_ids(1, ids)             # feature 1's local ids -> global
    seen.mark(g)                            # done by route() in a training forward
    seen.known(g)                           # (n,) bool
    rows = seen.route(g, hashed_rows, reserved_row)
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch
from torch import nn

WORD_BITS = 64


# reserve_unseen unset (None): on while the bits take at most this share of the budget. At
# dim 32 in fp32 a row is 1024 bits, so the bits cost R / 1024 of a budget of ratio R: on up
# to ~100x, off beyond (where every byte must go to rows, and the hashing trick must stay
# independent of the id count, e.g. on raw 32-bit ids).
AUTO_BUDGET_SHARE = 0.1


def reserve_on(flag: Optional[bool]) -> bool:
    """``reserve_unseen`` as a module sees it: unset (None) counts as on. The factory
    (``embeddings/factory.py``) decides an unset flag against the budget before building."""
    return flag is not False


def decide_reserve(flag: Optional[bool], budget: Optional[int], cardinalities: Sequence[int]) -> bool:
    """An explicit flag stays; unset: on without a budget, else while ``seen_bytes`` of the
    ``cardinalities`` is at most ``AUTO_BUDGET_SHARE`` of ``budget``."""
    if flag is not None:
        return flag
    return budget is None or seen_bytes(cardinalities) <= AUTO_BUDGET_SHARE * budget


def seen_bytes(cardinalities: Sequence[int]) -> int:
    """Bytes of the bit buffer for these features (8 per 64 ids, rounded up)."""
    return -(-sum(cardinalities) // WORD_BITS) * 8


class SeenIds(nn.Module):
    """Bits over the concatenated id spaces of ``cardinalities`` (one per compressed feature)."""

    def __init__(self, cardinalities: Sequence[int], device: torch.device | None = None) -> None:
        super().__init__()
        starts: List[int] = [0]
        for n in cardinalities:
            starts.append(starts[-1] + int(n))
        self.starts = starts[:-1]  # host ints: offsets never need a device read
        words = -(-starts[-1] // WORD_BITS)
        self.register_buffer("bits", torch.zeros(words, dtype=torch.int64, device=device))

    def global_ids(self, feature: int, ids: torch.Tensor) -> torch.Tensor:
        """Local ids (n,) of compressed feature ``feature`` -> global ids (n,) int64."""
        return ids.to(torch.int64) + self.starts[feature]

    @torch.no_grad()
    def mark(self, gids: torch.Tensor) -> None:
        """Set the bits of ``gids`` (n,) int64 (duplicates allowed)."""
        if gids.numel() == 0:
            return
        uniq = torch.unique(gids)  # distinct ids: distinct (word, bit) pairs
        words, inv = torch.unique(uniq // WORD_BITS, return_inverse=True)
        # distinct powers of two within a word add without carries: their sum is their OR
        # (bit 63 is the sign bit of int64; two's complement keeps the pattern exact)
        ors = torch.zeros_like(words).index_add_(0, inv, torch.bitwise_left_shift(torch.ones_like(uniq), uniq % WORD_BITS))
        self.bits[words] = torch.bitwise_or(self.bits[words], ors)

    def known(self, gids: torch.Tensor) -> torch.Tensor:
        """(n,) bool: was each global id marked?"""
        word = self.bits[gids // WORD_BITS]
        return torch.bitwise_and(torch.bitwise_right_shift(word, gids % WORD_BITS), 1).bool()

    def looked_up(self, gids: torch.Tensor) -> torch.Tensor:
        """(n,) bool known-ness of ``gids`` (n,) as a forward sees it: a training-mode forward
        marks them first (so all are known and the reserved rows never train)."""
        if self.training:
            self.mark(gids)
        return self.known(gids)

    def route(self, gids: torch.Tensor, rows: torch.Tensor, reserved: torch.Tensor) -> torch.Tensor:
        """The rows ids read: ``rows`` (n,) (their usual rows) where the global id ``gids`` (n,)
        is known, ``reserved`` (n,) or scalar tensor where not. A training-mode forward marks
        the ids first, so every id it looks up is known and the reserved rows never train."""
        return torch.where(self.looked_up(gids), rows, reserved)
