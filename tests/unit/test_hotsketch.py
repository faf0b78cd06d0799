"""HotSketch: the vectorised module against the plain-Python model, state round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compactrec.embeddings.accounting import module_bytes
from compactrec.embeddings.hotsketch import HotSketch
from tests.unit.hotsketch_model import HotSketchModel


def zipf_batches(seed: int, batches: int, size: int, keys: int, a: float = 1.2):
    """Zipf ranks scattered over [0, 10 * keys) with integer scores 1..3 (exact in float32)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, keys + 1) ** a
    ids = rng.permutation(10 * keys)[:keys]
    for _ in range(batches):
        k = ids[rng.choice(keys, size=size, p=p / p.sum())]
        yield k.astype(np.int64), rng.integers(1, 4, size=size).astype(np.float32)


def model_state(m: HotSketchModel):
    return (
        torch.tensor(m.keys),
        torch.tensor(np.array(m.scores, dtype=np.float32)),
        torch.tensor(m.hot, dtype=torch.int32),
        torch.tensor(m.owner),
    )


def assert_same(sk: HotSketch, m: HotSketchModel) -> None:
    keys, scores, hot, owner = model_state(m)
    assert torch.equal(sk.keys, keys)  # the same keys in the same slots of every bucket
    assert torch.equal(sk.scores, scores)  # exact: integer scores, same float32 ops in order
    assert torch.equal(sk.hot, hot)
    assert torch.equal(sk.owner, owner)  # the same hot set, the same slot per hot key
    n = int(sk.free_count)
    assert sk.free[:n].tolist() == m.free
    assert float(sk.inserted) == m.inserted


@pytest.mark.parametrize("buckets,hot_slots,threshold,slots", [(64, 40, 6.0, 4), (16, 48, 3.0, 2), (50, 8, 4.0, 4)])
def test_module_matches_model_with_decay(buckets, hot_slots, threshold, slots):
    sk = HotSketch(buckets, hot_slots, threshold, slots=slots, decay=0.9, seed=3)
    m = HotSketchModel(buckets, hot_slots, threshold, slots=slots, decay=0.9, seed=3)
    demoted_any = False
    for keys, scores in zipf_batches(seed=buckets, batches=12, size=400, keys=600):
        pk, ps, dk, ds = sk.insert(torch.from_numpy(keys), torch.from_numpy(scores))
        promoted, demoted = m.insert(keys.tolist(), scores.tolist())
        assert dict(zip(pk.tolist(), ps.tolist())) == promoted
        assert dict(zip(dk.tolist(), ds.tolist())) == demoted
        demoted_any |= bool(demoted)
        assert_same(sk, m)
    assert m.decays > 0 and m.demotions > 0 and demoted_any  # decay and demotion happened
    probe = torch.arange(0, 6000, 7)
    assert sk.query(probe).tolist() == [m.query(k) for k in probe.tolist()]


def test_promotion_stops_when_hot_slots_run_out():
    sk = HotSketch(buckets=32, hot_slots=5, threshold=2.0)
    keys = torch.arange(20) * 11
    pk, ps, _, _ = sk.insert(keys, torch.full((20,), 3.0))
    assert sk.num_hot == 5 and int(sk.free_count) == 0
    assert sorted(ps.tolist()) == [0, 1, 2, 3, 4]
    slots = sk.query(keys)
    assert int((slots >= 0).sum()) == 5 and set(pk.tolist()) == set(keys[slots >= 0].tolist())
    pk2, _, _, _ = sk.insert(keys, torch.full((20,), 3.0))  # over T, but nothing is free
    assert pk2.numel() == 0 and sk.num_hot == 5
    assert torch.equal(sk.query(keys), slots)


def test_state_dict_round_trip_and_unseen_keys():
    sk = HotSketch(buckets=40, hot_slots=30, threshold=5.0, decay=0.9, seed=1)
    for keys, scores in zipf_batches(seed=7, batches=6, size=500, keys=300):
        sk.insert(torch.from_numpy(keys), torch.from_numpy(scores))
    assert sk.num_hot > 0
    fresh = HotSketch(buckets=40, hot_slots=30, threshold=5.0, decay=0.9, seed=1)
    fresh.load_state_dict(sk.state_dict())
    probe = torch.arange(3000)
    assert torch.equal(fresh.query(probe), sk.query(probe))
    hk, hs = sk.hot_keys()
    assert torch.equal(sk.query(hk), hs)
    # and both continue identically
    for keys, scores in zipf_batches(seed=8, batches=3, size=500, keys=300):
        a = sk.insert(torch.from_numpy(keys), torch.from_numpy(scores))
        b = fresh.insert(torch.from_numpy(keys), torch.from_numpy(scores))
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert torch.equal(fresh.query(probe), sk.query(probe))
    unseen = torch.arange(10**9, 10**9 + 50)
    assert (sk.query(unseen) == -1).all() and (HotSketch(8, 4, 1.0).query(probe) == -1).all()


def test_aggregation_and_space_saving():
    """One bucket, two slots: repeated keys aggregate; a full bucket replaces its minimum."""
    sk = HotSketch(buckets=1, hot_slots=2, threshold=100.0, slots=2)
    sk.insert(torch.tensor([5, 5, 9]), torch.tensor([1.0, 2.0, 1.0]))  # 5 -> 3, 9 -> 1
    sk.insert(torch.tensor([7]), torch.tensor([4.0]))  # replaces 9 (min 1) with 1 + 4
    assert sorted(zip(sk.keys[0].tolist(), sk.scores[0].tolist())) == [(5, 3.0), (7, 5.0)]
    sk.insert(torch.tensor([7]), torch.tensor([95.0]))  # 100 >= T: promoted to slot 0
    assert sk.query(torch.tensor([7, 5])).tolist() == [0, -1]


def test_state_bytes_match_buffers():
    assert module_bytes(HotSketch(37, 11, 1.0, slots=3)) == HotSketch.state_bytes(37, 11, 3)


class _Group:
    """Two sketch shards in two threads: each reduction waits for both, like a collective."""

    def __init__(self, n: int) -> None:
        import threading

        self.barrier, self.vals, self.sums = threading.Barrier(n), [None] * n, [0] * n

    def reduce(self, rank: int, value, op):
        self.vals[rank] = value
        self.barrier.wait()
        out = op(list(self.vals))
        self.barrier.wait()
        return out


class _ShardSync:
    def __init__(self, group: _Group, rank: int) -> None:
        self.group, self.rank = group, rank

    def max(self, value: int) -> int:
        return self.group.reduce(self.rank, value, max)

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        self.group.sums[self.rank] += 1
        return self.group.reduce(self.rank, value.double(), lambda vs: vs[0] + vs[1])


def test_two_shards_match_one_sketch_with_one_sum_per_batch():
    """Buckets split over 2 shards (sharding/cafe.py's layout), each inserting the keys of its
    buckets, in lockstep rounds: the same keys and scores in every bucket, the same hot set and
    the same decays as one sketch, with ONE score reduction per batch (not one per round)."""
    import threading

    from compactrec.hashing import hash_mod

    buckets, split, hot_slots, threshold = 48, 20, 48 * 4, 5.0  # slots never run out: same hot set
    one = HotSketch(buckets, hot_slots, threshold, decay=0.9, seed=2)
    shards = [HotSketch(split, hot_slots, threshold, decay=0.9, seed=2, total_buckets=buckets),
              HotSketch(buckets - split, hot_slots, threshold, decay=0.9, seed=2, total_buckets=buckets, bucket_offset=split)]
    group = _Group(2)
    batches = list(zipf_batches(seed=5, batches=10, size=400, keys=500))
    for keys, scores in batches:
        k, s = torch.from_numpy(keys), torch.from_numpy(scores)
        one.insert(k, s)
        mine = hash_mod(k, buckets, 2) >= split
        parts = [(k[~mine], s[~mine]), (k[mine], s[mine])]
        threads = [threading.Thread(target=shards[r].insert, args=(*parts[r], _ShardSync(group, r))) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert group.sums == [len(batches)] * 2  # one reduction per batch on each shard
    assert torch.equal(torch.cat([sh.keys for sh in shards]), one.keys)
    assert torch.equal(torch.cat([sh.scores for sh in shards]), one.scores)
    hot = lambda sk: set(sk.owner[sk.owner >= 0].tolist())  # noqa: E731
    assert hot(shards[0]) | hot(shards[1]) == hot(one) and len(hot(one)) > 0
    assert float(shards[0].inserted) == float(shards[1].inserted) == pytest.approx(float(one.inserted))
    assert one.decay_after < sum(float(s.sum()) for _, s in batches)  # decays happened
