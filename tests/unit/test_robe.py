"""ROBE on tiny tables: disjoint offsets equal a full table, multi-hot bags are the sum of
their ids, gradients reach the shared array and a step moves it, state_dict round trip,
exact bytes and any ratio, the fused op equals the collection (sharded) path."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from compactrec.embeddings.accounting import FP32, full_embedding_bytes, module_bytes
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.robe import ARRAY, RobeEmbedding, hash_constants
from compactrec.kernels.robe.reference import P
from compactrec.trainer.config import CompressionConfig, RobeConfig
from tests.unit.test_methods import DIM, SCHEMA, SMALL, _all_ids_kjt, _demo_schema, _emb_cfg, _full_with_weights, \
    _per_id_sum, _random_bags, _weights


def _robe(**kw) -> RobeEmbedding:
    emb = build_embeddings(_emb_cfg("robe", {"robe": RobeConfig(**kw)}), CompressionConfig(), SCHEMA, DIM)
    assert isinstance(emb, RobeEmbedding)
    return emb


def _array(emb: RobeEmbedding) -> torch.Tensor:
    return emb.array.embedding_bags[ARRAY].weight


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("block", [DIM, 2, 1])  # Z = d (one chunk per id), 3 chunks, element-wise
def test_disjoint_offsets_with_a_large_enough_array_are_the_full_table(block: int, fused: bool):
    """identity hash: feature f's id x reads rows start_f + x d/Z + c, so an array of
    sum N_f d values holds each full table, row-major, with no sharing."""
    full = _full_with_weights()
    emb = _robe(block=block, size=(50 + 37) * DIM, hash="identity")
    emb.fused = fused
    with torch.no_grad():
        emb.full.embedding_bags["t_a"].weight.copy_(_weights(full, "a"))
        flat = torch.cat([_weights(full, "b"), _weights(full, "c")]).reshape(-1, block)  # (sum N d / Z, Z)
        _array(emb).copy_(flat)
    kjt = _random_bags(7, 4, 3)
    torch.testing.assert_close(emb(kjt).values(), full(kjt).values(), rtol=0, atol=0)


@pytest.mark.parametrize("block", [1, 3, DIM])
def test_multi_hot_bag_is_the_sum_of_its_ids(block: int):
    torch.manual_seed(0)
    emb = _robe(block=block, size=30)
    with torch.no_grad():
        _array(emb).normal_()
    kjt = _random_bags(6, 5, 4)
    got = emb(kjt)
    for key, want in _per_id_sum(emb, kjt).items():
        torch.testing.assert_close(got[key], want, rtol=1e-5, atol=1e-5)


def test_features_hash_apart_and_lookups_spread_over_the_array():
    """The same id of two features reads different chunks (the feature index is in the hash),
    and the (id, chunk) lookups of all ids spread over the rows like uniform draws."""
    torch.manual_seed(0)
    emb = _robe(block=2, size=24)  # 12 rows of 2: ids must share values
    with torch.no_grad():
        _array(emb).normal_()
    e = emb(_all_ids_kjt())
    assert not torch.allclose(e["b"][:37], e["c"][:37])
    from compactrec.kernels.robe.reference import robe_rows

    big = _robe(block=2, size=2 * 997)
    ids = torch.cat([torch.arange(50), torch.arange(37)])
    bases = torch.cat([big.bases[0].repeat(50), big.bases[1].repeat(37)])
    rows = robe_rows(ids, bases, num_blocks=3, num_rows=997, mult_id=big.mult_id, mult_block=big.mult_block)
    # 261 uniform draws over 997 rows hit ~230 distinct rows (sd ~6)
    assert torch.unique(rows).numel() >= 205


@pytest.mark.parametrize("fused", [True, False])
def test_gradients_reach_the_array_and_one_step_moves_every_parameter(fused: bool):
    torch.manual_seed(0)
    emb = _robe(block=3, size=40)
    emb.fused = fused
    kjt = _all_ids_kjt()
    (emb(kjt).values() * torch.randn(kjt.stride(), 3 * DIM)).sum().backward()
    for name, p in emb.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), f"no gradient reaches {name}"
    before = {n: p.detach().clone() for n, p in emb.named_parameters()}
    torch.optim.Adagrad(emb.parameters(), lr=0.1).step()
    for name, p in emb.named_parameters():
        assert not torch.equal(p.detach(), before[name]), f"{name} did not move in one step"


def test_fused_op_equals_the_collection_path():
    torch.manual_seed(0)
    emb = _robe(block=2, size=50)
    with torch.no_grad():
        for p in emb.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    kjt = _random_bags(9, 5, 6)
    weight = torch.randn(kjt.stride(), 3 * DIM)
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
    emb = _robe(block=3, size=31)  # rounded up to 11 rows of 3
    assert module_bytes(emb) == 5 * DIM * FP32 + 11 * 3 * FP32
    assert emb.rows == 11 and emb.num_blocks == 2
    a, b, c, d = hash_constants(0)
    assert all(1 <= v < P for v in (a, b, c, d)) and hash_constants(0) == (a, b, c, d) != hash_constants(1)
    assert emb.mult_id == b and emb.mult_block == c
    assert emb.bases.tolist() == [(a * 1 + d) % P, (a * 2 + d) % P]  # features b, c: schema index 1, 2


@pytest.mark.parametrize("ratio", [4, 16, 64, 1000, 100_000])
def test_any_ratio_is_met_within_5_percent(ratio: int):
    schema = _demo_schema()
    cfg = _emb_cfg("robe")
    cfg.small_field_rows = 200
    emb = build_embeddings(cfg, CompressionConfig(ratio=ratio), schema, 32, device=torch.device("meta"))
    achieved = full_embedding_bytes(schema, 32) / module_bytes(emb)
    assert ratio <= achieved <= ratio * 1.05, achieved


def test_block_must_divide_the_dimension():
    with pytest.raises(ValueError, match="must divide"):
        _robe(block=4, size=40)
