"""A plain-Python model of ``HotSketch``: lists and dicts, one key at a time.

It follows the vectorisation contract of ``embeddings/hotsketch.py`` literally: aggregate per
key, group by bucket (key ascending), process round r = the r-th key of every bucket in
ascending bucket order, decay check after each round. Scores are numpy float32 so every
addition and multiplication rounds like the module's; the bucket hash is the numpy front end
of splitmix64 (an independent implementation of ``hash_mod``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Tuple

import numpy as np

from compactrec.hashing import splitmix64_np

F32 = np.float32


class HotSketchModel:
    def __init__(
        self, buckets: int, hot_slots: int, threshold: float, slots: int = 4, decay: float = 0.99, seed: int = 0
    ):
        self.w, self.c, self.seed = buckets, slots, seed
        self.threshold, self.decay = F32(threshold), F32(decay)
        self.keys = [[-1] * slots for _ in range(buckets)]
        self.scores = [[F32(0)] * slots for _ in range(buckets)]
        self.hot = [[-1] * slots for _ in range(buckets)]
        self.free = list(range(hot_slots - 1, -1, -1))  # stack: free.pop() gives 0, 1, 2, ...
        self.owner = [-1] * hot_slots
        self.inserted = 0.0
        self.decays = 0
        self.demotions = 0

    def bucket(self, key: int) -> int:
        h = int(splitmix64_np(np.array([key], dtype=np.uint64), self.seed)[0])
        return (h & 0x7FFFFFFFFFFFFFFF) % self.w

    def query(self, key: int) -> int:
        b = self.bucket(key)
        for j in range(self.c):
            if self.keys[b][j] == key:
                return self.hot[b][j]
        return -1

    def insert(self, keys: List[int], scores: List[float]) -> Tuple[Dict[int, int], Dict[int, int]]:
        """Returns the net change: ({promoted key: slot}, {demoted key: slot})."""
        before = list(self.owner)
        agg: Dict[int, F32] = {}
        for k, s in zip(keys, scores):
            agg[k] = F32(agg.get(k, F32(0)) + F32(s))
        by_bucket: Dict[int, List[int]] = defaultdict(list)
        for k in sorted(agg):
            by_bucket[self.bucket(k)].append(k)
        rounds = max((len(v) for v in by_bucket.values()), default=0)
        for r in range(rounds):
            total = 0.0
            for b in sorted(by_bucket):
                if r < len(by_bucket[b]):
                    k = by_bucket[b][r]
                    self._insert_one(b, k, agg[k])
                    total += float(agg[k])
            self.inserted += total
            if self.inserted > self.w * float(self.threshold) * 10:
                self._decay()
        promoted = {o: s for s, o in enumerate(self.owner) if o >= 0 and o != before[s]}
        demoted = {o: s for s, o in enumerate(before) if o >= 0 and o != self.owner[s]}
        return promoted, demoted

    def _insert_one(self, b: int, key: int, v: F32) -> None:
        keys, scores, hot = self.keys[b], self.scores[b], self.hot[b]
        if key in keys:
            j = keys.index(key)
            scores[j] = F32(scores[j] + v)
        elif -1 in keys:
            j = keys.index(-1)
            keys[j], scores[j] = key, v
        else:
            j = min(range(self.c), key=lambda i: (scores[i], i))  # minimum, ties -> lowest index
            if hot[j] >= 0:
                return  # the minimum is hot: drop the key
            keys[j], scores[j] = key, F32(scores[j] + v)
        if hot[j] < 0 and scores[j] >= self.threshold and self.free:
            hot[j] = self.free.pop()
            self.owner[hot[j]] = key

    def _decay(self) -> None:
        self.decays += 1
        self.inserted = 0.0
        for b in range(self.w):
            for j in range(self.c):
                self.scores[b][j] = F32(self.scores[b][j] * self.decay)
                if self.hot[b][j] >= 0 and self.scores[b][j] < self.threshold:
                    self.free.append(self.hot[b][j])
                    self.free.sort(reverse=True)  # the lowest free slot pops first
                    self.owner[self.hot[b][j]] = -1
                    self.hot[b][j] = -1
                    self.demotions += 1
