"""HotSketch (CAFE, Zhang et al. SIGMOD 2024): which ids are hot, decided online.

``w`` buckets of ``c`` slots; each slot holds {key, score, hot slot}. An id whose (decayed)
importance reaches the threshold ``T`` gets one of ``H`` hot slots (the row it owns in the hot
table); the caller migrates rows from what ``insert`` returns.

Per inserted (key x, score v), in bucket b = ``hash_mod(x, w, seed)``:

- x present: score += v; promote if not hot, score >= T and a hot slot is free;
- x absent, an empty slot: the first (lowest index) gets (x, v); promote if v >= T;
- bucket full: the minimum-score slot (ties: lowest index) is replaced by (x, min + v)
  (Space-Saving) when it is not hot, then promote if >= T; when it is hot, x is dropped.
- Decay: once the score inserted since the last decay exceeds ``w * T * 10``, every score is
  multiplied by ``decay``, and hot slots whose score fell below T are demoted (slot freed).

Vectorisation contract (``tests/unit/hotsketch_model.py`` follows it exactly):

1. a batch is aggregated per unique key (scores summed in float32, in input order);
2. keys are grouped by bucket and ordered inside a bucket by key ascending;
3. round r processes the r-th key of every bucket at once (no two keys of a round share a
   bucket, so the round is a set of independent single-key inserts);
4. within a round, free hot slots go to the promotion candidates in ascending bucket order,
   lowest free slot first (the free stack is kept sorted, so the slot an id gets depends
   only on the sketch's state, never on the history of frees: a checkpoint can rebuild it);
5. after each round the round's total score is added to the decay counter and the decay
   check runs (demoted slots become free).

A sketch can be one shard of a larger one (``sharding/cafe.py``): it then owns the buckets
[bucket_offset, bucket_offset + buckets) of ``total_buckets`` (hash and decay threshold use
the total), and ``insert(..., sync=...)`` runs the same number of rounds as the other shards
with the decay decided on the summed score of all shards, so the shards together behave like
one sketch (except that each shard hands out only its own hot slots).

All state lives in buffers, so ``state_dict`` round-trips the exact id -> hot slot answers.
Constants T and decay are rounded to float32 once, so float32 and float64 arithmetic agree.

Example::

    sk = HotSketch(buckets=1024, hot_slots=1024, threshold=20.0)
    promoted_keys, promoted_slots, demoted_keys, demoted_slots = sk.insert(ids, scores)
    slots = sk.query(ids)           # (N,) int64 hot slot, -1 = not hot
"""

from __future__ import annotations

from typing import List, Optional, Protocol, Tuple

import numpy as np
import torch
from torch import nn

from compactrec.hashing import hash_mod

# Bytes of state: per bucket slot key int64 + score float32 + hot int32; per hot slot
# free-stack int32 + owner int64; two scalars (free count int64, decay counter float64).
SLOT_BYTES = 8 + 4 + 4
HOT_SLOT_BYTES = 4 + 8
SCALAR_BYTES = 8 + 8

Events = List[Tuple[torch.Tensor, torch.Tensor]]  # (slots, owner before the event)


def _f32(x: float) -> float:
    return float(np.float32(x))


class RoundSync(Protocol):
    """Reductions over the shards of one sketch (``sharding/cafe.py`` implements it)."""

    def max(self, value: int) -> int: ...

    def sum(self, value: torch.Tensor) -> torch.Tensor: ...  # elementwise over the shards, float64, same shape


def rebuild_free(module: "HotSketch") -> None:
    """The free stack is a function of ``owner`` (sorted free slots, lowest on top): rebuild
    it, so a state saved by a differently partitioned sketch loads consistently."""
    free = torch.nonzero(module.owner < 0).squeeze(1).flip(0).to(torch.int32)
    module.free.zero_()
    module.free[: free.numel()] = free
    module.free_count.fill_(free.numel())


class HotSketch(nn.Module):
    """Online hot-id detector with ``hot_slots`` hot rows to hand out.

    Keys are non-negative int64 ids (CAFE: local id + feature offset).
    """

    def __init__(
        self,
        buckets: int,
        hot_slots: int,
        threshold: float,
        slots: int = 4,
        decay: float = 0.99,
        seed: int = 0,
        device: Optional[torch.device] = None,
        total_buckets: Optional[int] = None,
        bucket_offset: int = 0,
    ) -> None:
        super().__init__()
        if buckets < 0 or slots < 1 or hot_slots < 0:
            raise ValueError(
                f"HotSketch needs buckets >= 1, slots >= 1, hot_slots >= 0 (got {buckets}, {slots}, {hot_slots})"
            )
        self.w, self.c, self.num_slots = buckets, slots, hot_slots
        self.total_buckets = buckets if total_buckets is None else total_buckets
        self.bucket_offset = bucket_offset
        self.threshold, self.decay, self.seed = _f32(threshold), _f32(decay), seed
        self.register_buffer("keys", torch.full((buckets, slots), -1, dtype=torch.int64, device=device))
        self.register_buffer("scores", torch.zeros((buckets, slots), dtype=torch.float32, device=device))
        self.register_buffer("hot", torch.full((buckets, slots), -1, dtype=torch.int32, device=device))
        # Stack of free hot slots: free[:free_count], top at the end (slot 0 pops first).
        self.register_buffer("free", torch.arange(hot_slots - 1, -1, -1, dtype=torch.int32, device=device))
        self.register_buffer("free_count", torch.tensor(hot_slots, dtype=torch.int64, device=device))
        self.register_buffer("owner", torch.full((hot_slots,), -1, dtype=torch.int64, device=device))
        self.register_buffer("inserted", torch.tensor(0.0, dtype=torch.float64, device=device))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        # Rebuild here, not in a load post-hook: DMP's load_state_dict calls this method of
        # every unsharded module directly and never runs post-hooks.
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        rebuild_free(self)

    @staticmethod
    def state_bytes(buckets: int, hot_slots: int, slots: int) -> int:
        """Bytes of every buffer of a sketch of this size (equals ``module_bytes``)."""
        return buckets * slots * SLOT_BYTES + hot_slots * HOT_SLOT_BYTES + SCALAR_BYTES

    @property
    def decay_after(self) -> float:
        """Decay once the score inserted since the last decay exceeds this (w * T * 10)."""
        return self.total_buckets * self.threshold * 10

    @property
    def num_hot(self) -> int:
        return self.num_slots - int(self.free_count)

    def bucket_of(self, keys: torch.Tensor) -> torch.Tensor:
        """This sketch's bucket index of each key (a shard: the global bucket - its offset)."""
        return hash_mod(keys, self.total_buckets, self.seed) - self.bucket_offset

    def hot_keys(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys, slots) of every hot id, by slot ascending."""
        slots = torch.nonzero(self.owner >= 0).squeeze(1)
        return self.owner[slots], slots

    def query(self, keys: torch.Tensor) -> torch.Tensor:
        """keys: any shape int64 -> hot slot per key (same shape, int64; -1 = not hot)."""
        flat = keys.reshape(-1).to(torch.int64)
        b = self.bucket_of(flat)
        match = self.keys[b] == flat[:, None]  # (N, c); a key sits in at most one slot
        slot = torch.where(match, self.hot[b], -1).amax(dim=1) if flat.numel() else flat
        return slot.to(torch.int64).view(keys.shape)

    @torch.no_grad()
    def insert(
        self, keys: torch.Tensor, scores: Optional[torch.Tensor] = None, sync: Optional["RoundSync"] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Insert a batch: keys (N,) int64, scores (N,) float (default 1 per key).

        ``sync`` (shards only): reduces the round count (max) and each round's score (sum)
        over all shards. Returns the net change over the batch, each (K,) int64:
        ``(promoted_keys, promoted_slots, demoted_keys, demoted_slots)``; a key promoted and
        demoted within the same batch appears in neither.
        """
        keys = keys.reshape(-1).to(torch.int64)
        scores = torch.ones_like(keys, dtype=torch.float32) if scores is None else scores.reshape(-1).float()
        events: Events = []
        rounds = self._rounds(keys, scores) if keys.numel() else []
        n = len(rounds) if sync is None else sync.max(len(rounds))
        # Every round's inserted importance, summed over the shards in ONE reduction for the
        # whole batch (not one per round), then the decay decisions taken on the host from the
        # running sum: float64 additions on the host round exactly as on the buffer, and every
        # shard sees the same totals. Reading ``inserted`` once per batch, not once per round,
        # also saves a device sync per round on GPU. Written back before returning.
        free = int(self.free_count)
        if n:
            local = torch.zeros(n, dtype=torch.float64, device=keys.device)
            if rounds:
                local[: len(rounds)] = torch.stack([v.sum(dtype=torch.float64) for _, _, v in rounds])
            totals = (local if sync is None else sync.sum(local)).tolist()
            inserted = float(self.inserted)
        for r in range(n):
            if r < len(rounds):
                free = self._insert_round(*rounds[r], events, free)
            inserted += totals[r]
            if inserted > self.decay_after:
                inserted = 0.0
                free = self._decay(events, free)
        if n:
            self.inserted.fill_(inserted)
        return self._net_changes(events)

    def _rounds(self, keys: torch.Tensor, scores: torch.Tensor) -> List[Tuple[torch.Tensor, ...]]:
        """Aggregate per key, group by bucket (key ascending inside), split into rounds."""
        uniq, inv = torch.unique(keys, return_inverse=True)  # sorted ascending
        if int(uniq[0]) < 0:
            raise ValueError(f"HotSketch.insert: keys must be >= 0 (-1 marks an empty slot), got {int(uniq[0])}")
        agg = torch.zeros(uniq.numel(), dtype=torch.float32, device=keys.device).index_add_(0, inv, scores)
        bucket = self.bucket_of(uniq)
        order = torch.sort(bucket, stable=True).indices  # stable: key ascending inside a bucket
        bucket, uniq, agg = bucket[order], uniq[order], agg[order]
        _, counts = torch.unique_consecutive(bucket, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(bucket.numel(), device=keys.device) - torch.repeat_interleave(starts, counts)
        order = torch.sort(rank, stable=True).indices  # stable: bucket ascending inside a round
        sizes = torch.bincount(rank).tolist()
        parts = [t[order].split(sizes) for t in (uniq, bucket, agg)]
        return list(zip(*parts))

    def _insert_round(self, x: torch.Tensor, b: torch.Tensor, v: torch.Tensor, events: Events, free: int) -> int:
        """x, b, v: (m,) keys, their distinct buckets (ascending), scores; ``free``: the free
        hot slots (host count). Returns the free count after the round's promotions."""
        c = self.c
        # index_select / index_copy_: a fraction of the cost of advanced indexing at these sizes
        kb, sb = self.keys.index_select(0, b), self.scores.index_select(0, b)  # (m, c)
        match, empty = kb == x[:, None], kb < 0
        present, has_empty = match.any(1), empty.any(1)
        j = torch.where(
            present,
            match.to(torch.uint8).argmax(1),  # argmax/argmin return the first extremum
            torch.where(has_empty, empty.to(torch.uint8).argmax(1), sb.argmin(1)),
        )
        flat = b * c + j  # distinct within a round (distinct buckets): plain index writes
        col = j.unsqueeze(1)
        hot_j = self.hot.view(-1).index_select(0, flat)
        score_j = sb.gather(1, col).squeeze(1)
        new_score = torch.where(present | ~has_empty, score_j + v, v)  # min + v when replacing
        keep = present | has_empty | (hot_j < 0)  # a full bucket whose minimum is hot drops x
        # unmasked writes (a dropped key rewrites the slot's own values): no boolean indexing
        self.keys.view(-1).index_copy_(0, flat, torch.where(keep, x, kb.gather(1, col).squeeze(1)))
        self.scores.view(-1).index_copy_(0, flat, torch.where(keep, new_score, score_j))
        if not free:
            return free
        cand = torch.nonzero(keep & (hot_j < 0) & (new_score >= self.threshold)).squeeze(1)
        m = min(cand.numel(), free)
        if m:
            cand = cand[:m]  # ascending position = ascending bucket
            slots = self.free[free - m : free].flip(0)  # pop: the top of the stack first
            self.free_count -= m
            promoted = x.index_select(0, cand)
            self.hot.view(-1).index_copy_(0, flat.index_select(0, cand), slots)
            self.owner.index_copy_(0, slots.long(), promoted)
            events.append((slots.long(), torch.full_like(promoted, -1)))
        return free - m

    def _decay(self, events: Events, free: int) -> int:
        """Scale every score by ``decay``; demote hot slots that fell below T. ``free``: host
        count of free hot slots; returns it after the demotions."""
        self.scores.mul_(self.decay)
        self.inserted.zero_()
        hot, scores = self.hot.view(-1), self.scores.view(-1)
        idx = torch.nonzero((hot >= 0) & (scores < self.threshold)).squeeze(1)  # (bucket, slot) order
        if idx.numel():
            slots = hot[idx].long()
            n = free
            self.free[n : n + idx.numel()] = slots.to(torch.int32)
            self.free_count += idx.numel()
            top = n + idx.numel()  # keep the stack sorted: the lowest free slot pops first
            self.free[:top] = torch.sort(self.free[:top], descending=True).values
            events.append((slots, self.owner[slots].clone()))
            self.owner[slots] = -1
            hot[idx] = -1
        return free + idx.numel()

    def _net_changes(self, events: Events) -> Tuple[torch.Tensor, ...]:
        """Compare each touched slot's owner before its first event with its owner now."""
        if not events:
            e = self.owner.new_empty(0)
            return e, e, e, e
        slots = torch.cat([s for s, _ in events])
        prior = torch.cat([p for _, p in events])
        touched, inv = torch.unique(slots, return_inverse=True)
        pos = torch.arange(slots.numel(), device=slots.device)
        first = torch.full_like(touched, slots.numel()).scatter_reduce_(0, inv, pos, "amin")
        before, after = prior[first], self.owner[touched]
        up = (after >= 0) & (after != before)
        down = (before >= 0) & (before != after)
        return after[up], touched[up], before[down], touched[down]
