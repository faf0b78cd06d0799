"""ROBE on tiny tables: disjoint offsets equal a full table, multi-hot bags are the sum of
their ids, gradients reach the shared array and a step moves it, state_dict round trip,
exact bytes and any ratio, the fused op equals the collection (sharded) path. Both layouts:
Z a multiple of 4 (one pooled lookup per (feature, chunk)) and packed rows (Z = 1, 2, 3, 6)."""

from __future__ import annotations

import copy
from typing import Dict

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import FP32, full_embedding_bytes, module_bytes
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.full import build_full
from compactrec.embeddings.robe import RobeEmbedding, hash_constants
from compactrec.kernels.robe.reference import P
from compactrec.trainer.config import CompressionConfig, RobeConfig
from tests.unit.test_methods import DIM, SCHEMA, _all_ids_kjt, _demo_schema, _emb_cfg, _kjt, _random_bags

# (dim, Z): packed one chunk per id; packed element-wise; packed 3 chunks; pooled 3 chunks; pooled one chunk
LAYOUTS = [(DIM, DIM), (DIM, 1), (DIM, 2), (12, 4), (8, 8)]


def _robe(dim: int = DIM, **kw) -> RobeEmbedding:
    kw.setdefault("reserve_unseen", False)  # these tests check the hashed reads (tests/unit/test_seen.py: the reserve)
    emb = build_embeddings(_emb_cfg("robe", {"robe": RobeConfig(**kw)}), CompressionConfig(), SCHEMA, dim)
    assert isinstance(emb, RobeEmbedding)
    assert (emb.pack == 1) == (kw.get("block", 8) % 4 == 0)
    return emb


def _array(emb: RobeEmbedding) -> torch.Tensor:
    """The (R, Z) array: a view of the stored table, packed or not."""
    return emb.arrays[0].weight().view(-1, emb.cfg.block)


def _per_id_sum(emb, kjt: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
    """Sum over each bag of the module's own one-id-bag outputs."""
    out = {}
    for key, jt in kjt.to_dict().items():
        rows = []
        for bag in torch.split(jt.values(), jt.lengths().tolist()):
            singles = {k: [[0]] * max(bag.numel(), 1) for k in kjt.keys()}
            singles[key] = [[int(i)] for i in bag] or [[0]]
            e = emb(_kjt(singles))[key]
            rows.append(e.sum(0) if bag.numel() else torch.zeros(emb.dim))
        out[key] = torch.stack(rows)
    return out


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dim,block", LAYOUTS)
def test_disjoint_offsets_with_a_large_enough_array_are_the_full_table(dim: int, block: int, fused: bool):
    """identity hash: feature f's id x reads rows start_f + x d/Z + c, so an array of
    sum N_f d values holds each full table, row-major, with no sharing."""
    torch.manual_seed(0)
    full = build_full(SCHEMA, dim)
    with torch.no_grad():
        for t in full.embedding_bags.values():
            t.weight.normal_()
    emb = _robe(dim, block=block, size=(50 + 37) * dim, hash="identity")
    emb.fused = fused
    w = {f: full.embedding_bags[f"t_{f}"].weight for f in "abc"}
    with torch.no_grad():
        emb.full.embedding_bags["t_a"].weight.copy_(w["a"])
        flat = torch.cat([w["b"], w["c"]]).reshape(-1, block)  # (sum N d / Z, Z)
        _array(emb)[: flat.shape[0]].copy_(flat)  # packing may round the array up to whole table rows
    kjt = _random_bags(7, 4, 3)
    torch.testing.assert_close(emb(kjt).values(), full(kjt).values(), rtol=0, atol=0)


@pytest.mark.parametrize("dim,block", LAYOUTS)
def test_multi_hot_bag_is_the_sum_of_its_ids(dim: int, block: int):
    torch.manual_seed(0)
    emb = _robe(dim, block=block, size=48)
    with torch.no_grad():
        _array(emb).normal_()
    kjt = _random_bags(6, 5, 4)
    got = emb(kjt)
    for key, want in _per_id_sum(emb, kjt).items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5)


def test_features_hash_apart_and_lookups_spread_over_the_array():
    """The same id of two features reads different chunks (the feature index is in the hash),
    and many ids' (id, chunk) reads load the rows evenly. (A few dense ids do not spread like
    uniform draws: the hash is linear, docs/methods.md, ROBE limits.)"""
    torch.manual_seed(0)
    emb = _robe(block=2, size=24)  # 12 chunk rows of 2: ids must share values
    with torch.no_grad():
        _array(emb).normal_()
    e = emb(_all_ids_kjt())
    assert not torch.allclose(e["b"][:37], e["c"][:37])
    from compactrec.kernels.robe.reference import robe_rows

    big = _robe(block=2, size=2 * 998)
    ids = torch.arange(100_000)
    bases = big.arrays[0].bases[0].repeat(ids.numel())
    rows = robe_rows(ids, bases, num_blocks=3, num_rows=998, mult_id=big.arrays[0].mult_id, mult_block=big.arrays[0].mult_block)
    # 300000 (id, chunk) reads over 998 rows: ~300 per row, sd ~17 if uniform
    load = torch.bincount(rows.reshape(-1), minlength=998)
    assert int(load.min()) > 230 and int(load.max()) < 370, (int(load.min()), int(load.max()))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("dim,block", LAYOUTS)
def test_gradients_reach_the_array_and_one_step_moves_every_parameter(dim: int, block: int, fused: bool):
    torch.manual_seed(0)
    emb = _robe(dim, block=block, size=48)
    emb.fused = fused
    kjt = _all_ids_kjt()
    (emb(kjt).values() * torch.randn(kjt.stride(), 3 * dim)).sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"
    before = {n: p.detach().clone() for n, p in emb.named_parameters()}
    torch.optim.Adagrad(emb.parameters(), lr=0.1).step()
    for name, p in emb.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move in one step"


@pytest.mark.parametrize("dim,block", LAYOUTS)
def test_fused_op_equals_the_collection_path(dim: int, block: int):
    torch.manual_seed(0)
    emb = _robe(dim, block=block, size=52)
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    kjt = _random_bags(9, 5, 6)
    weight = torch.randn(kjt.stride(), 3 * dim)
    runs = []
    for fused in (True, False):
        emb.fused = fused
        emb.zero_grad()
        out = emb(kjt).values()
        (out * weight).sum().backward()
        runs.append((out.detach(), {n: p.grad.clone() for n, p in emb.named_parameters()}))
    (fo, fg), (co, cg) = runs
    torch.testing.assert_close(fo, co, rtol=1e-5, atol=1e-5)
    for name in cg:
        torch.testing.assert_close(fg[name], cg[name], rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    a = _robe(size=36, block=3)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    b = _robe(size=36, block=3)
    kjt = _random_bags(5, 3, 5)
    assert not torch.allclose(a(kjt).values(), b(kjt).values())
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    torch.testing.assert_close(a(kjt).values(), b(kjt).values(), rtol=0, atol=0)


def test_bytes_by_hand_and_seeded_constants():
    emb = _robe(block=3, size=31)  # packed: table rows of lcm(3, 4) = 12 values, 31 -> 3 rows
    assert module_bytes(emb) == 5 * DIM * FP32 + 3 * 12 * FP32
    assert emb.arrays[0].rows == 12 and emb.num_blocks == 2 and emb.pack == 4
    assert module_bytes(_robe(12, block=4, size=31)) == 5 * 12 * FP32 + 8 * 4 * FP32  # unpacked: 8 rows of 4
    a, b, c, d = hash_constants(0)
    assert all(1 <= v < P for v in (a, b, c, d)) and hash_constants(0) == (a, b, c, d) != hash_constants(1)
    assert emb.arrays[0].mult_id == b and emb.arrays[0].mult_block == c
    assert emb.arrays[0].bases.tolist() == [(a * 1 + d) % P, (a * 2 + d) % P]  # features b, c: schema index 1, 2


@pytest.mark.parametrize("block", [8, 1])
@pytest.mark.parametrize("ratio", [4, 16, 64, 1000, 100_000])
def test_any_ratio_is_met_within_5_percent(ratio: int, block: int):
    schema = _demo_schema()
    cfg = _emb_cfg("robe", {"robe": RobeConfig(block=block)})
    cfg.small_field_rows = 200
    emb = build_embeddings(cfg, CompressionConfig(ratio=ratio), schema, 32, device=torch.device("meta"))
    achieved = full_embedding_bytes(schema, 32) / module_bytes(emb)
    assert ratio <= achieved <= ratio * 1.05, achieved


def test_block_must_divide_the_dimension():
    with pytest.raises(ValueError, match="must divide"):
        _robe(block=4, size=40)


# ------------------------------------------------------------------ feature groups (group_by)

DEMO_GROUPS = [["cat_0", "cat_1"], ["cat_2", "cat_9"]]


def _grouped(group_by: str, groups=(), ratio: float = 16, block: int = 8):
    schema = _demo_schema()
    cfg = _emb_cfg("robe", {"robe": RobeConfig(block=block, group_by=group_by, groups=[list(g) for g in groups])})
    cfg.small_field_rows = 200
    return schema, build_embeddings(cfg, CompressionConfig(ratio=ratio), schema, 16)


@pytest.mark.parametrize("block", [4, 2])
def test_one_array_per_feature_keeps_features_apart(block: int):
    """group_by=feature: an array per compressed feature, in proportion to its ids; writing
    into one array moves only its feature's embeddings (with one array every feature moves)."""
    torch.manual_seed(0)
    schema, emb = _grouped("feature", block=block)
    big = [f for f in schema.sparse if f.cardinality > 200]
    assert [g for g in emb.groups] == [[f.name] for f in big] and len(emb.arrays) == len(big) > 2
    assert len({a.table for a in emb.arrays}) == len(big)
    rows = [a.rows for a in emb.arrays]
    top = max(range(len(big)), key=lambda i: big[i].cardinality)
    assert rows[top] == max(rows) and min(rows) >= emb.pack
    assert full_embedding_bytes(schema, 16) / module_bytes(emb) == pytest.approx(16, rel=0.05)
    kjt = _kjt({f.name: [[i % f.cardinality] for i in range(7)] for f in schema.sparse})
    before = emb(kjt).to_dict()
    with torch.no_grad():
        emb.arrays[top].weight().add_(1.0)
    after = emb(kjt).to_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved == {big[top].name}


def test_named_groups_share_an_array_each_and_the_rest_share_one_more():
    schema, emb = _grouped("groups", DEMO_GROUPS)
    big = [f.name for f in schema.sparse if f.cardinality > 200]
    named = [[n for n in big if n in g] for g in DEMO_GROUPS]
    named = [g for g in named if g]
    rest = [n for n in big if all(n not in g for g in DEMO_GROUPS)]
    assert emb.groups == named + [rest]
    assert [a.table for a in emb.arrays] == [f"robe_array_{k}" for k in range(len(emb.groups))]
    with pytest.raises(ValueError, match="cat_1' is in two groups"):
        _grouped("groups", [["cat_1"], ["cat_1", "cat_2"]])
    with pytest.raises(ValueError, match="nope not compressed features"):
        _grouped("groups", [["nope", "cat_2"]])
    with pytest.raises(ValueError, match="group_by='table'"):
        _grouped("table")


@pytest.mark.parametrize("block", [8, 2])
def test_grouped_fused_op_equals_the_collection_path_and_every_array_moves(block: int):
    torch.manual_seed(0)
    schema, emb = _grouped("feature", block=block)
    g = torch.Generator().manual_seed(1)
    bags = {f.name: [[int(i) for i in torch.randint(0, f.cardinality, (int(n),), generator=g)]
                     for n in torch.randint(0, 4, (9,), generator=g)] for f in schema.sparse}
    kjt = _kjt(bags)
    emb.fused = True
    fused = emb(kjt).values()
    emb.fused = False
    plain = emb(kjt).values()
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    plain.pow(2).sum().backward()
    grads = [a.weight().grad for a in emb.arrays]
    assert all(gr is not None and gr.abs().sum() > 0 for gr in grads)
