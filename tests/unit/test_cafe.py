"""CAFE: outputs against direct computations, gradients, online promotion, state, budget."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
from compactrec.embeddings.budget import BudgetError
from compactrec.embeddings.cafe import HOT_TABLE, CafeEmbedding, build_cafe, cafe_bytes, hash_table, plan_cafe
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.full import full_tables
from compactrec.hashing import hash_mod
from compactrec.trainer.config import CafeConfig, CompressionConfig, EmbeddingConfig, OptimConfig, SynthConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.data.datasets.synthetic import synthetic_cardinalities
from compactrec.trainer.optim import apply_sparse_optimizer

DIM, SMALL = 8, 10
SCHEMA = FeatureSchema(
    label="label",
    dense=(),
    sparse=(SparseFeature("a", 40), SparseFeature("s", 6), SparseFeature("b", 25, multi_hot=True)),
)
BIG = {"a": 40, "b": 25}


def make_cafe(**cfg_kw):
    cfg = CafeConfig(**cfg_kw)
    plan = plan_cafe(SCHEMA, DIM, None, cfg, SMALL)
    return build_cafe(SCHEMA, DIM, cfg, SMALL, None, plan=plan), cfg


def kjt(bags: Dict[str, List[List[int]]]) -> KeyedJaggedTensor:
    keys = list(bags)
    values = [i for k in keys for bag in bags[k] for i in bag]
    lengths = [len(bag) for k in keys for bag in bags[k]]
    return KeyedJaggedTensor(
        keys=keys, values=torch.tensor(values, dtype=torch.int64), lengths=torch.tensor(lengths, dtype=torch.int32)
    )


def random_bags(rng: np.random.Generator, batch: int, multi_hot: bool, zipf: float = 0.0) -> Dict[str, list]:
    def draw(n: int) -> int:
        if zipf:
            p = 1.0 / np.arange(1, n + 1) ** zipf
            return int(rng.choice(n, p=p / p.sum()))
        return int(rng.integers(n))

    out = {}
    for f in SCHEMA.sparse:
        lens = rng.integers(0, 5, batch) if (multi_hot and f.multi_hot) else np.ones(batch, dtype=int)
        out[f.name] = [[draw(f.cardinality) for _ in range(n)] for n in lens]
    return out


def probe() -> KeyedJaggedTensor:
    """Bag i of each compressed feature holds id i alone (B = 40)."""
    return kjt(
        {"a": [[i] for i in range(40)], "s": [[] for _ in range(40)], "b": [[i] if i < 25 else [] for i in range(40)]}
    )


def make_hot(m, ids: Dict[str, List[int]], score: float) -> None:
    gids = torch.cat([m.global_ids(f, torch.tensor(v)) for f, v in ids.items()])
    m.sketch.insert(gids, torch.full((gids.numel(),), score))


def weight(m, table: str) -> torch.Tensor:
    return m.ebc.embedding_bags[table].weight


def direct(m, bags: Dict[str, List[List[int]]], f: str) -> torch.Tensor:
    """Output of compressed feature f computed id by id from the tables and the sketch."""
    rows = []
    for bag in bags[f]:
        e = torch.zeros(DIM)
        for i in bag:
            slot = int(m.sketch.query(m.global_ids(f, torch.tensor([i])))[0])
            if slot >= 0:
                e = e + weight(m, HOT_TABLE)[slot]
            else:
                for l, n in enumerate(m.plan.hash_rows[f]):
                    row = int(hash_mod(torch.tensor([i]), n, seed=m.cfg.seed + 1 + l)[0])
                    e = e + weight(m, hash_table(f, l))[row]
        rows.append(e)
    return torch.stack(rows)


@pytest.mark.parametrize("multi_hot", [False, True])
def test_all_hot_equals_full_table(multi_hot):
    torch.manual_seed(0)
    m, cfg = make_cafe(hot_rows=96, slots=8, threshold=2.0)
    make_hot(m, {"a": list(range(40)), "b": list(range(25))}, score=2.0)
    assert m.sketch.num_hot == 65
    full = EmbeddingBagCollection(tables=full_tables(SCHEMA, DIM))
    with torch.no_grad():
        weight(m, "t_s").copy_(full.embedding_bags["t_s"].weight)
        for f, n in BIG.items():
            slots = m.sketch.query(m.global_ids(f, torch.arange(n)))
            weight(m, HOT_TABLE)[slots] = full.embedding_bags[f"t_{f}"].weight
    x = kjt(random_bags(np.random.default_rng(1), 16, multi_hot))
    got, want = m.eval()(x), full(x)
    assert got.keys() == SCHEMA.sparse_names
    for name in SCHEMA.sparse_names:
        torch.testing.assert_close(got[name], want[name])


@pytest.mark.parametrize("levels", [1, 2])
def test_cold_ids_use_hash_rows(levels):
    torch.manual_seed(0)
    m, cfg = make_cafe(hot_rows=8, threshold=3.0, levels=levels, seed=5, reserve_unseen=False)  # untrained cold ids: hashed
    assert all(len(r) == levels for r in m.plan.hash_rows.values())
    make_hot(m, {"a": [0, 1, 2], "b": [3, 4]}, score=5.0)
    bags = random_bags(np.random.default_rng(2), 24, multi_hot=True)
    bags["a"][0], bags["b"][0] = [0, 7], [3, 9, 9]  # hot and cold ids in one bag
    out = m.eval()(kjt(bags))
    for f in BIG:
        torch.testing.assert_close(out[f], direct(m, bags, f))
    torch.testing.assert_close(out["s"], weight(m, "t_s")[[bag[0] for bag in bags["s"]]])


@pytest.mark.parametrize("levels", [1, 2])
def test_key_hash_rows_equals_per_feature_hash_rows(levels):
    """The one-call hashing of the migration (every feature at once) = each feature's own."""
    m, _ = make_cafe(hot_rows=8, levels=levels, seed=3)
    feats, keys = [], []
    for f, n in BIG.items():
        ids = torch.arange(n, dtype=torch.int64)
        feats.append((f, ids))
        keys.append(m.global_ids(f, ids))
    fidx, rows = m.key_hash_rows(torch.cat(keys))
    assert len(rows) == levels
    start = 0
    for i, (f, ids) in enumerate(feats):
        part = slice(start, start + ids.numel())
        assert (fidx[part] == i).all()
        for l in range(levels):
            assert torch.equal(rows[l][part], m.hash_rows(f, ids, l))
        start += ids.numel()


def used_rows(m, bags) -> Dict[str, set]:
    used: Dict[str, set] = {name: set() for name in m.ebc.embedding_bags}
    used["t_s"] |= {i for bag in bags["s"] for i in bag}
    for f in BIG:
        ids = torch.tensor([i for bag in bags[f] for i in bag], dtype=torch.int64)
        slots = m.sketch.query(m.global_ids(f, ids))
        used[HOT_TABLE] |= set(slots[slots >= 0].tolist())
        for l in range(m.cfg.levels):
            used[hash_table(f, l)] |= set(m.hash_rows(f, ids[slots < 0], l).tolist())
    return used


@pytest.mark.parametrize("fused", [False, True])
def test_every_used_row_trains(fused):
    torch.manual_seed(0)
    m, _ = make_cafe(hot_rows=8, threshold=3.0, levels=2)
    make_hot(m, {"a": [0, 1], "b": [2]}, score=5.0)
    bags = random_bags(np.random.default_rng(3), 32, multi_hot=True)
    bags["a"][0], bags["b"][0] = [0, 1], [2]
    if fused:  # as trainer/optim.py: FBGEMM-style rowwise Adagrad applied in backward
        apply_sparse_optimizer(m, OptimConfig(sparse="rowwise_adagrad", sparse_lr=0.1))
    else:
        opt = torch.optim.SGD(m.parameters(), lr=0.1)
    used = used_rows(m, bags)
    before = {n: w.detach().clone() for n, w in m.ebc.named_parameters()}
    out = m.train()(kjt(bags)).values()
    (out * torch.randn_like(out)).sum().backward()
    if not fused:
        opt.step()
    for name, w in m.ebc.named_parameters():
        table = name.split(".")[1]
        changed = set(torch.nonzero((w != before[name]).any(1)).squeeze(1).tolist())
        assert used[table] and changed == used[table], table  # every used row moved, no other


@pytest.mark.parametrize("importance", ["count", "grad_norm"])
def test_online_promotion_migrates_rows(importance):
    torch.manual_seed(0)
    m, cfg = make_cafe(hot_rows=10, threshold=4.0, levels=2, importance=importance)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    rng = np.random.default_rng(4)
    counts: Dict[str, np.ndarray] = {f: np.zeros(n) for f, n in BIG.items()}
    checked = 0
    for step in range(12):
        bags = random_bags(rng, 32, multi_hot=True, zipf=1.3)
        for f in BIG:
            np.add.at(counts[f], [i for bag in bags[f] for i in bag], 1)
        m.train()
        out = m(kjt(bags)).values()
        ((out.sum(1) - 1.0) ** 2).mean().backward()
        opt.step()
        opt.zero_grad()
        was_hot = set(m.sketch.hot_keys()[0].tolist())
        before = m.eval()(probe())
        promoted = m.flush()
        after = m(probe())
        new_hot = set(m.sketch.hot_keys()[0].tolist()) - was_hot
        assert len(new_hot) <= promoted
        for f in BIG:
            for i in range(BIG[f]):
                if int(m.global_ids(f, torch.tensor(i))) in new_hot:  # migrated: output unchanged
                    torch.testing.assert_close(after[f][i], before[f][i])
                    checked += 1
    assert checked > 0
    hot = set(m.sketch.hot_keys()[0].tolist())
    for f in BIG:  # the three most frequent ids of each feature ended hot
        top = np.argsort(-counts[f], kind="stable")[:3]
        assert {int(m.global_ids(f, torch.tensor(int(i)))) for i in top} <= hot, f


def test_grad_norm_scores_are_pooled_gradient_norms_with_mean_one():
    m, _ = make_cafe(hot_rows=4, threshold=1e6)
    bags = random_bags(np.random.default_rng(7), 12, multi_hot=True)
    out = m.train()(kjt(bags))
    g = torch.randn_like(out.values())
    (out.values() * g).sum().backward()  # d loss / d pooled = g
    keys, scores = m._pending[0].scores("grad_norm")
    col = {name: i * DIM for i, name in enumerate(SCHEMA.sparse_names)}
    want_keys, want = [], []
    for f in BIG:
        for b, bag in enumerate(bags[f]):
            for i in bag:
                want_keys.append(int(m.global_ids(f, torch.tensor(i))))
                want.append(float(g[b, col[f] : col[f] + DIM].norm()))
    want_t = torch.tensor(want)
    assert keys.tolist() == want_keys
    torch.testing.assert_close(scores, want_t / want_t.mean())
    torch.testing.assert_close(scores.mean(), torch.tensor(1.0))


def test_importance_is_recorded_only_in_training():
    m, _ = make_cafe(hot_rows=4, threshold=1.0, importance="count")
    x = kjt(random_bags(np.random.default_rng(5), 8, multi_hot=True))
    with torch.no_grad():
        m.train()(x)
    m.eval()(x)
    assert m.flush() == 0 and m.sketch.num_hot == 0
    m.train()(x)
    assert m.sketch.num_hot == 0  # pending until the next training forward
    m.train()(x)
    assert m.sketch.num_hot == 4


@pytest.mark.parametrize("importance", ["count", "grad_norm"])
def test_update_every_inserts_k_batches_at_once(importance):
    """update_every=3: the sketch does not change for 3 steps, then holds exactly what ONE
    insert of the 3 batches' (key, score) pairs gives (each batch normalised on its own),
    with the promoted ids' rows migrated; a state_dict flushes what is pending."""
    torch.manual_seed(0)
    m, cfg = make_cafe(hot_rows=6, threshold=3.0, importance=importance, update_every=3)
    ref, _ = make_cafe(hot_rows=6, threshold=3.0, importance=importance)
    rng = np.random.default_rng(11)
    pairs = []
    for step in range(3):
        out = m.train()(kjt(random_bags(rng, 16, multi_hot=True, zipf=1.2)))
        (out.values() * torch.randn_like(out.values())).sum().backward()
        pairs.append(m._pending[-1].scores(importance))
        assert m.sketch.num_hot == 0 and float(m.sketch.inserted) == 0.0 and len(m._pending) == step + 1
    keys = torch.cat([k for k, _ in pairs])
    scores = torch.cat([v for _, v in pairs])
    promoted_keys, _, _, _ = ref.sketch.insert(keys, scores)
    assert promoted_keys.numel() > 0
    hash_before = m.eval()(probe()).to_dict()
    m.train()(kjt(random_bags(rng, 16, multi_hot=True)))  # the 4th step's forward updates first
    for name in ("keys", "scores", "hot", "owner", "inserted"):
        torch.testing.assert_close(getattr(m.sketch, name), getattr(ref.sketch, name), rtol=0, atol=0)
    after = m.eval()(probe()).to_dict()
    for f in BIG:  # migrated: a promoted id reads its hash embedding from the hot table
        for i in range(BIG[f]):
            if int(m.global_ids(f, torch.tensor(i))) in set(promoted_keys.tolist()):
                torch.testing.assert_close(after[f][i], hash_before[f][i])
    assert len(m._pending) == 1
    m.state_dict()
    assert not m._pending  # forced: a checkpoint holds every step's importance


def test_state_dict_round_trip():
    torch.manual_seed(0)
    m, cfg = make_cafe(hot_rows=10, threshold=3.0, levels=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.05)
    rng = np.random.default_rng(6)
    for _ in range(5):
        out = m.train()(kjt(random_bags(rng, 32, multi_hot=True, zipf=1.2))).values()
        (out**2).sum().backward()
        opt.step()
        opt.zero_grad()
    assert m._pending  # the last step's importance is still waiting...
    state = m.state_dict()
    assert not m._pending and m.sketch.num_hot > 0  # ...and the checkpoint includes it
    torch.manual_seed(1)
    fresh, _ = make_cafe(hot_rows=10, threshold=3.0, levels=2)
    fresh.load_state_dict(state)
    gids = torch.arange(65)
    assert torch.equal(fresh.sketch.query(gids), m.sketch.query(gids))
    x = kjt(random_bags(rng, 16, multi_hot=True))
    for mode in ("eval", "train"):
        a, b = getattr(m, mode)()(x), getattr(fresh, mode)()(x)
        assert torch.equal(a.values(), b.values())


@pytest.mark.parametrize("dim", [16, 32])
@pytest.mark.parametrize("ratio", [4, 16, 64, 256])
def test_bytes_and_ratio_on_demo_features(dim, ratio):
    cards = synthetic_cardinalities(SynthConfig())
    schema = FeatureSchema("label", (), tuple(SparseFeature(f"cat_{i}", c) for i, c in enumerate(cards)))
    cfg = CafeConfig(levels=2 if ratio == 16 else 1)
    full = full_embedding_bytes(schema, dim)
    plan = plan_cafe(schema, dim, full // ratio, cfg, 200)
    m = build_cafe(schema, dim, cfg, 200, full // ratio)
    assert m.plan == plan
    used = cafe_bytes(plan, schema, dim, cfg, 200)
    assert used == module_bytes(m) <= full // ratio
    assert abs(full / used / ratio - 1) <= 0.05
    assert plan.buckets == plan.hot_rows > 0 and m.sketch.w == plan.hot_rows


def test_fixed_hot_rows_bytes():
    cfg = CafeConfig(hot_rows=7, levels=3, slots=2)
    for budget in (None, 40_000):
        plan = plan_cafe(SCHEMA, DIM, budget, cfg, SMALL)
        assert plan.hot_rows == 7 and all(len(r) == 3 and min(r) >= 1 for r in plan.hash_rows.values())
        m = build_cafe(SCHEMA, DIM, cfg, SMALL, budget)
        assert cafe_bytes(plan, SCHEMA, DIM, cfg, SMALL) == module_bytes(m)


def test_budget_errors():
    small = 6 * DIM * 4
    with pytest.raises(BudgetError, match="largest reachable compression ratio"):
        plan_cafe(SCHEMA, DIM, small - 1, CafeConfig(), SMALL)
    with pytest.raises(BudgetError, match="largest reachable compression ratio"):
        plan_cafe(SCHEMA, DIM, small + 2 * DIM * 4, CafeConfig(), SMALL)  # 2 hash rows, no hot row


def test_factory_builds_cafe():
    cfg = EmbeddingConfig(kind="cafe", small_field_rows=SMALL)
    emb = build_embeddings(cfg, CompressionConfig(ratio=2), SCHEMA, DIM)
    assert isinstance(emb, CafeEmbedding) and emb.sketch.num_slots == emb.plan.hot_rows > 0
    out = emb(kjt(random_bags(np.random.default_rng(8), 4, multi_hot=True)))
    assert out.keys() == SCHEMA.sparse_names and out.values().shape == (4, 3 * DIM)


def test_hash_row_reader_assembles_row_and_column_shards(one_rank_group):
    """``HashRowReader`` (the sharded migration's read of promoted ids' hash rows) on tables
    split into row shards and into column shards (all on rank 0 here; under DMP each on its
    owner): every id's row is the sum over levels of its hash rows, bit for bit."""
    from torch.distributed._shard.sharded_tensor import Shard, init_from_local_shards

    from compactrec.sharding.cafe import HashRowReader

    m, _ = make_cafe(hot_rows=8, levels=2, seed=4)
    state, split = {}, 0
    for name, bag in m.ebc.embedding_bags.items():
        if not name.startswith("cafe_hash_"):
            continue
        w = bag.weight.data
        r, d = w.shape
        if split % 2 and r > 1:  # rows [0, r/2) and [r/2, r)
            parts = [(w[: r // 2], [0, 0]), (w[r // 2 :], [r // 2, 0])]
        else:  # columns [0, d/2) and [d/2, d)
            parts = [(w[:, : d // 2], [0, 0]), (w[:, d // 2 :], [0, d // 2])]
        split += 1
        shards = [Shard.from_tensor_and_offsets(t.contiguous(), off, 0) for t, off in parts]  # column slices: copies
        state[f"embedding_bags.{name}.weight"] = init_from_local_shards(shards, r, d, process_group=one_rank_group)
    assert split == 4  # 2 features x 2 levels: both layouts for both levels
    reader = HashRowReader(m, state, 0, one_rank_group)
    keys = torch.cat([m.global_ids(f, torch.arange(n)) for f, n in BIG.items()])
    got = reader.read(*m.key_hash_rows(keys))
    start = 0
    for f, n in BIG.items():
        ids = torch.arange(n)
        rows = [weight(m, hash_table(f, l))[m.hash_rows(f, ids, l)] for l in range(2)]
        torch.testing.assert_close(got[start : start + n], rows[0] + rows[1], rtol=0, atol=0)
        start += n
