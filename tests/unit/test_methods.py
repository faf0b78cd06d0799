"""The compression methods hash, qr, memcom, mixed_dim on tiny tables: degenerate cases
equal a plain table, multi-hot pooling is the sum of per-id embeddings (compose before pool),
gradients reach every parameter, state_dict round trips, exact byte accounting."""

from __future__ import annotations

import copy
from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import FP32, module_bytes
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.full import build_full
from compactrec.embeddings.hashing_trick import HashEmbedding, HashPlan
from compactrec.embeddings.memcom import MemComEmbedding, MemComPlan
from compactrec.embeddings.mixed_dim import MixedDimEmbedding, _Blocks
from compactrec.embeddings.qr import QREmbedding, QRPlan, scatter_multiplier
from compactrec.trainer.config import (
    CompressionConfig,
    HashConfig,
    MemComConfig,
    MixedDimConfig,
    QRConfig,
    load_config,
)
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

DIM = 6  # not a power of two on purpose
SCHEMA = FeatureSchema(
    label="label",
    dense=("d0",),
    sparse=(SparseFeature("a", 5), SparseFeature("b", 50, multi_hot=True), SparseFeature("c", 37, multi_hot=True)),
)  # the bags below are multi-hot (the one-hot fast path: tests/unit/test_one_hot_path.py)
SMALL = 10  # feature "a" (5 ids) keeps a full table


def _kjt(bags: Dict[str, List[List[int]]]) -> KeyedJaggedTensor:
    keys = list(bags)
    values = [i for k in keys for bag in bags[k] for i in bag]
    lengths = [len(bag) for k in keys for bag in bags[k]]
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values, dtype=torch.int64), lengths=torch.tensor(lengths, dtype=torch.int32))


def _random_bags(batch: int, max_len: int, seed: int) -> KeyedJaggedTensor:
    g = np.random.default_rng(seed)
    bags = {}
    for f in SCHEMA.sparse:
        bags[f.name] = [list(g.integers(0, f.cardinality, g.integers(0, max_len + 1))) for _ in range(batch)]
        bags[f.name][0] = [f.cardinality - 1, f.cardinality - 1]  # last row, duplicated in a bag
    return _kjt(bags)


def _all_ids_kjt() -> KeyedJaggedTensor:
    """One-hot bags covering every id of every feature (padded with id 0)."""
    n = max(f.cardinality for f in SCHEMA.sparse)
    return _kjt({f.name: [[i % f.cardinality] for i in range(n)] for f in SCHEMA.sparse})


def _full_with_weights(seed: int = 0) -> EmbeddingBagCollection:
    torch.manual_seed(seed)
    full = build_full(SCHEMA, DIM)
    with torch.no_grad():
        for t in full.embedding_bags.values():
            t.weight.normal_()
    return full


def _weights(full: EmbeddingBagCollection, feature: str) -> torch.Tensor:
    return full.embedding_bags[f"t_{feature}"].weight


def _close(a, b) -> None:
    torch.testing.assert_close(a.values(), b.values(), rtol=1e-5, atol=1e-6)
    assert a.keys() == b.keys()


# ---- degenerate cases equal the plain table --------------------------------------------


def test_hash_identity_with_enough_rows_is_the_full_table():
    full = _full_with_weights()
    plan = HashPlan(rows={"b": 50, "c": 37})
    emb = HashEmbedding(SCHEMA, DIM, HashConfig(hash="identity", reserve_unseen=False), plan, SMALL)
    with torch.no_grad():
        for f in SCHEMA.sparse:
            name = "t_a" if f.name == "a" else f"hash_{f.name}"
            emb.ebc.embedding_bags[name].weight.copy_(_weights(full, f.name))
    kjt = _random_bags(7, 4, 0)
    _close(emb(kjt), full(kjt))


@pytest.mark.parametrize("scatter", [True, False])
def test_qr_with_one_collision_is_the_full_table(scatter: bool):
    full = _full_with_weights()
    emb = QREmbedding(SCHEMA, DIM, QRConfig(operation="mult", scatter=scatter), QRPlan({"b": 1, "c": 1}), SMALL)
    with torch.no_grad():
        emb.table_weight("t_a").copy_(_weights(full, "a"))
        for j, f in enumerate(("b", "c")):
            w = _weights(full, f)
            rows = emb.scattered(j, torch.arange(w.shape[0]))  # id i lives in W_q row s(i)
            emb.table_weight(f"qr_q_{f}")[rows] = w
            emb.table_weight(f"qr_r_{f}").fill_(1.0)
    kjt = _random_bags(7, 4, 1)
    _close(emb(kjt), full(kjt))


@pytest.mark.parametrize("n", [3, 10, 50, 97, 1000, 5074])
def test_qr_scatter_is_a_bijection_that_parts_neighbouring_ids(n: int):
    a = scatter_multiplier(n)
    s = np.arange(n) * a % n
    assert sorted(s.tolist()) == list(range(n))  # (q, r) stays unique per id
    m = max(1, round(n ** 0.5))
    head = s[:m] // m  # the m first ids (the most frequent under a frequency map)
    assert len(set(head.tolist())) >= 0.6 * m  # without scatter they would all share W_q row 0
    assert len(set((np.arange(m) // m).tolist())) == 1


def test_qr_without_scatter_indexes_by_raw_id():
    emb = QREmbedding(SCHEMA, DIM, QRConfig(scatter=False), QRPlan({"b": 4, "c": 4}), SMALL)
    ids = torch.arange(50)
    assert torch.equal(emb.scattered(0, ids), ids)
    assert not torch.equal(QREmbedding(SCHEMA, DIM, QRConfig(), QRPlan({"b": 4, "c": 4}), SMALL).scattered(0, ids), ids)


def test_memcom_with_unit_scales_and_enough_rows_is_the_full_table():
    full = _full_with_weights()
    emb = MemComEmbedding(SCHEMA, DIM, MemComConfig(hash="identity", scale_init=1.0), MemComPlan({"b": 50, "c": 37}), SMALL)
    with torch.no_grad():
        emb.table_weight("t_a").copy_(_weights(full, "a"))
        for f in ("b", "c"):
            emb.table_weight(f"memcom_E_{f}").copy_(_weights(full, f))
            assert bool((emb.table_weight(f"memcom_w_{f}") == 1.0).all())  # the init
    kjt = _random_bags(7, 4, 2)
    _close(emb(kjt), full(kjt))


def _counts(seed: int = 0) -> Dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {f.name: g.zipf(1.3, f.cardinality).astype(np.int64) for f in SCHEMA.sparse}


@pytest.mark.parametrize("blocks", ["rows", "table"])
def test_mixed_dim_with_alpha_zero_is_the_full_table(blocks: str):
    full = _full_with_weights()
    cfg = MixedDimConfig(blocks=blocks, alpha=0.0, num_blocks=3, threshold=SMALL)
    emb = build_embeddings(_emb_cfg("mixed_dim", {"mixed_dim": cfg}), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    assert len(emb.projections) == 0  # alpha = 0: every block has the full width
    with torch.no_grad():
        emb.ebc.embedding_bags["t_a"].weight.copy_(_weights(full, "a"))
        for f in ("b", "c"):
            ids = torch.arange(SCHEMA.sparse[[x.name for x in SCHEMA.sparse].index(f)].cardinality)
            bounds = getattr(emb, f"bounds_{f}")
            block, row = emb._locate(f, ids, bounds) if blocks == "rows" else (torch.zeros_like(ids), ids)
            for k in range(len(emb.block_keys[f])):
                sel = block == k
                emb.ebc.embedding_bags[f"mde_{f}_b{k}"].weight[row[sel]] = _weights(full, f)[ids[sel]]
    kjt = _random_bags(7, 4, 3)
    _close(emb(kjt), full(kjt))


def _emb_cfg(kind: str, sub: Dict = None):
    cfg = load_config(None, [f"embedding.kind={kind}", f"embedding.small_field_rows={SMALL}"]).embedding
    for k, v in (sub or {}).items():
        setattr(cfg, k, v)
    return cfg


# ---- compose before pool ----------------------------------------------------------------


def _per_id_sum(emb, kjt: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
    """Sum over each bag of the module's own one-id-bag outputs."""
    out = {}
    for key, jt in kjt.to_dict().items():
        rows = []
        for bag in torch.split(jt.values(), jt.lengths().tolist()):
            if bag.numel() == 0:
                rows.append(torch.zeros(DIM))
                continue
            singles = {k: [[0]] * bag.numel() for k in kjt.keys()}
            singles[key] = [[int(i)] for i in bag]
            rows.append(emb(_kjt(singles))[key].sum(0))
        out[key] = torch.stack(rows)
    return out


@pytest.mark.parametrize("kind,sub", [
    ("qr", {"qr": QRConfig(operation="mult", collisions=4)}),
    ("qr", {"qr": QRConfig(operation="add", collisions=7)}),
    ("qr", {"qr": QRConfig(operation="concat", collisions=3)}),
    ("memcom", {"memcom": MemComConfig(rows=5, bias=True)}),
    ("hash", {"hash": HashConfig(rows=6)}),
    ("mixed_dim", {"mixed_dim": MixedDimConfig(alpha=0.7, num_blocks=3)}),
])
def test_multi_hot_bag_is_the_sum_of_its_ids(kind: str, sub: Dict):
    torch.manual_seed(0)
    emb = build_embeddings(_emb_cfg(kind, sub), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.5)  # no accidental symmetry (e.g. all-ones scales)
    kjt = _random_bags(6, 5, 4)
    got = emb(kjt)
    for key, want in _per_id_sum(emb, kjt).items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5)


def test_qr_differs_from_pool_then_compose():
    """The dlrm reference pools W_q and W_r separately: not the same on multi-hot bags."""
    torch.manual_seed(0)
    emb = build_embeddings(_emb_cfg("qr", {"qr": QRConfig(collisions=4)}), CompressionConfig(), SCHEMA, DIM)
    with torch.no_grad():
        for p in emb.parameters():
            p.normal_()
    kjt = _kjt({"a": [[0]], "b": [[1, 6]], "c": [[2]]})
    q, r = emb.table_weight("qr_q_b"), emb.table_weight("qr_r_b")
    (q1, q6), (r1, r6) = (emb.scattered(0, torch.tensor([1, 6])).div(4, rounding_mode="floor").tolist(),
                          (emb.scattered(0, torch.tensor([1, 6])) % 4).tolist())
    pooled_first = (q[q1] + q[q6]) * (r[r1] + r[r6])
    per_id = q[q1] * r[r1] + q[q6] * r[r6]
    torch.testing.assert_close(emb(kjt)["b"][0], per_id)
    assert not torch.allclose(per_id, pooled_first)


# ---- gradients, state ----------------------------------------------------------------------

KINDS = [
    ("hash", {"hash": HashConfig(rows=7)}),
    ("qr", {"qr": QRConfig(collisions=4)}),
    ("memcom", {"memcom": MemComConfig(rows=5, bias=True, scale_init=1.0)}),  # default w = 0: tested below
    ("mixed_dim", {"mixed_dim": MixedDimConfig(alpha=0.8, num_blocks=3)}),
    ("mixed_dim", {"mixed_dim": MixedDimConfig(blocks="table", alpha=0.8, threshold=SMALL)}),
]


@pytest.mark.parametrize("kind,sub", KINDS)
def test_gradients_reach_every_parameter(kind: str, sub: Dict):
    torch.manual_seed(0)
    emb = build_embeddings(_emb_cfg(kind, sub), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    kjt = _all_ids_kjt()
    (emb(kjt).values() * torch.randn(kjt.stride(), 3 * DIM)).sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"{kind}: no gradient reaches {name}"


def test_memcom_default_scales_start_at_zero_and_every_parameter_moves_in_two_steps():
    """w = 0: an entity no step trained embeds to 0 (a full table's untrained row is ~0), and
    the shared rows E start learning once the first step has moved w."""
    torch.manual_seed(0)
    emb = build_embeddings(_emb_cfg("memcom", {"memcom": MemComConfig(rows=5)}), CompressionConfig(), SCHEMA, DIM)
    assert MemComConfig().scale_init == 0.0
    kjt = _all_ids_kjt()
    out = emb(kjt).to_dict()
    assert float(out["b"].abs().sum()) == 0.0 and float(out["c"].abs().sum()) == 0.0
    before = {n: p.detach().clone() for n, p in emb.named_parameters()}
    opt = torch.optim.Adagrad(emb.parameters(), lr=0.1)
    target = torch.randn(kjt.stride(), 3 * DIM)
    for _ in range(2):
        opt.zero_grad()
        (emb(kjt).values() * target).sum().backward()
        opt.step()
    for name, p in emb.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"memcom: {name} did not move in two steps"


@pytest.mark.parametrize("kind,sub", KINDS)
def test_state_dict_round_trip(kind: str, sub: Dict):
    torch.manual_seed(0)
    a = build_embeddings(_emb_cfg(kind, sub), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    b = build_embeddings(_emb_cfg(kind, sub), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    kjt = _random_bags(5, 3, 5)
    assert not torch.allclose(a(kjt).values(), b(kjt).values())
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.testing.assert_close(a(kjt).values(), b(kjt).values(), rtol=0, atol=0)


# ---- byte accounting ---------------------------------------------------------------------


def test_bytes_by_hand():
    small = 5 * DIM * FP32  # feature "a" keeps its full table
    emb = build_embeddings(_emb_cfg("hash", {"hash": HashConfig(rows=7, reserve_unseen=False)}), CompressionConfig(), SCHEMA, DIM)
    assert module_bytes(emb) == small + (7 + 7) * DIM * 4
    # reserve_unseen (the default without a budget): a reserved row per hashed table + a bit
    # per id of every feature (5 + 50 + 37 = 92 ids: two int64 words)
    emb = build_embeddings(_emb_cfg("hash", {"hash": HashConfig(rows=7)}), CompressionConfig(), SCHEMA, DIM)
    assert module_bytes(emb) == small + (8 + 8) * DIM * 4 + 2 * 8
    emb = build_embeddings(_emb_cfg("qr", {"qr": QRConfig(collisions=4, reserve_unseen=False)}), CompressionConfig(), SCHEMA, DIM)
    assert module_bytes(emb) == small + ((13 + 4) + (10 + 4)) * DIM * 4  # ceil(50/4) + 4, ceil(37/4) + 4
    emb = build_embeddings(_emb_cfg("qr", {"qr": QRConfig(collisions=4)}), CompressionConfig(), SCHEMA, DIM)
    assert module_bytes(emb) == small + ((14 + 4) + (11 + 4)) * DIM * 4 + 2 * 8  # + a W_q row each, 87 bits
    emb = build_embeddings(_emb_cfg("memcom", {"memcom": MemComConfig(rows=5, bias=True, pack=4)}), CompressionConfig(), SCHEMA, DIM)
    scales = (13 * 4 + 10 * 4) * 2 * 4  # ceil(N/4) rows of 4 floats, w and b
    assert module_bytes(emb) == small + (5 + 5) * DIM * 4 + scales
    cfg = MixedDimConfig(alpha=1.0, num_blocks=3)
    emb = build_embeddings(_emb_cfg("mixed_dim", {"mixed_dim": cfg}), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    plan = _Blocks([f for f in SCHEMA.sparse if f.name != "a"], cfg, _counts()).plan(1.0, DIM, False)
    want = small
    for f, n in (("b", 50), ("c", 37)):
        rows, dims = plan.block_rows[f], plan.dims[f]
        stored = rows[:-1] + [n]  # the tail table is indexed by raw id
        for r, d in zip(stored, dims):
            table = -(-r * d // 4) * 4 if d < 4 else r * d  # 1- and 2-wide blocks: packed in rows of 4
            want += table * 4 + (d * DIM * 4 if d < DIM else 0)
        want += sum(rows[:-1]) * 12  # head ids int64 + ranks int32
    assert module_bytes(emb) == want
    assert isinstance(emb, MixedDimEmbedding) and len(emb.projections) > 0


def test_mixed_dim_row_blocks_rank_ids_by_frequency():
    cfg = MixedDimConfig(alpha=0.5, num_blocks=3)
    emb = build_embeddings(_emb_cfg("mixed_dim", {"mixed_dim": cfg}), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    counts = _counts()["b"]
    ids = torch.arange(50)
    block, row = emb._locate("b", ids, emb.bounds_b)
    pairs = set(zip(block.tolist(), row.tolist()))
    assert len(pairs) == 50  # a bijection: every id its own (block, row)
    sizes = [emb.bounds_b[k + 1] - emb.bounds_b[k] if k < 2 else 50 for k in range(3)]
    assert all(0 <= r < sizes[k] for k, r in pairs)
    # every id of a hotter block is at least as frequent as every id of a colder one
    for k in range(2):
        assert counts[(block == k).numpy()].min() >= counts[(block == k + 1).numpy()].max()
    dims = {f: [emb.widths[f"{f}__b{k}"] for k in range(3)] for f in "bc"}
    assert all(d == sorted(d, reverse=True) for d in dims.values())  # hotter blocks are wider
    assert max(d[0] for d in dims.values()) == DIM  # lambda: the most popular block gets d


# ---- budgets on the demo's feature set ---------------------------------------------------

def _demo_schema() -> FeatureSchema:
    from compactrec.trainer.config import SynthConfig
    from compactrec.data.convert import criteo
    from compactrec.data.datasets.synthetic import synthetic_cardinalities

    cards = synthetic_cardinalities(SynthConfig())
    return FeatureSchema("label", tuple(criteo.DENSE_NAMES), tuple(SparseFeature(n, c) for n, c in zip(criteo.SPARSE_NAMES, cards)))


UNREACHABLE = {("memcom", 64), ("mixed_dim", 64)}  # MEmCom < d = 32; MDE row blocks top out near 24x


@pytest.mark.parametrize("kind", ["hash", "qr", "memcom", "mixed_dim"])
@pytest.mark.parametrize("ratio", [4, 16, 64])
def test_achieved_ratio_within_5_percent_or_a_clear_error(kind: str, ratio: int):
    from compactrec.embeddings.accounting import full_embedding_bytes
    from compactrec.embeddings.budget import BudgetError

    schema = _demo_schema()
    g = np.random.default_rng(0)
    counts = lambda: {f.name: g.zipf(1.2, f.cardinality).astype(np.int64) for f in schema.sparse}  # noqa: E731
    cfg = load_config(None, [f"embedding.kind={kind}"]).embedding
    if (kind, ratio) in UNREACHABLE:
        with pytest.raises(BudgetError, match=f"{kind} .*cannot reach this ratio: .*at most"):
            build_embeddings(cfg, CompressionConfig(ratio=ratio), schema, 32, counts=counts)
        return
    emb = build_embeddings(cfg, CompressionConfig(ratio=ratio), schema, 32, counts=counts)
    achieved = full_embedding_bytes(schema, 32) / module_bytes(emb)
    assert ratio <= achieved <= ratio * 1.05, achieved


# ---- the fused kernels (unsharded path) agree with the collection path (the sharded one) ----

FUSED_KINDS = [
    ("hash", {"hash": HashConfig(rows=7)}),
    ("hash", {"hash": HashConfig(rows=60, hash="identity")}),
    ("qr", {"qr": QRConfig(collisions=4, operation="mult")}),
    ("qr", {"qr": QRConfig(collisions=6, operation="add")}),
    ("memcom", {"memcom": MemComConfig(rows=5, bias=True)}),
    ("memcom", {"memcom": MemComConfig(rows=60, hash="identity")}),
    ("mixed_dim", {"mixed_dim": MixedDimConfig(alpha=1.5, num_blocks=3)}),  # 1- and 2-wide packed blocks too
    ("mixed_dim", {"mixed_dim": MixedDimConfig(blocks="table", alpha=0.8, threshold=SMALL)}),
]


@pytest.mark.parametrize("kind,sub", FUSED_KINDS)
def test_fused_kernel_path_equals_the_collection_path(kind: str, sub: Dict):
    torch.manual_seed(0)
    emb = build_embeddings(_emb_cfg(kind, sub), CompressionConfig(), SCHEMA, DIM, counts=_counts)
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    if kind == "mixed_dim" and sub["mixed_dim"].blocks == "rows":
        assert emb.narrow_width, "the case should exercise packed narrow blocks"
    kjt = _random_bags(9, 5, 6)
    weight = torch.randn(kjt.stride(), 3 * DIM)
    grads = []
    for fused in (True, False):
        emb.fused = fused
        emb.zero_grad()
        out = emb(kjt).values()
        (out * weight).sum().backward()
        grads.append((out.detach(), {n: p.grad.clone() for n, p in emb.named_parameters()}))
    (fused_out, fused_g), (coll_out, coll_g) = grads
    torch.testing.assert_close(fused_out, coll_out, rtol=1e-5, atol=1e-5)
    for name in coll_g:
        torch.testing.assert_close(fused_g[name], coll_g[name], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")
