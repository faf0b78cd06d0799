"""``reserve_unseen`` (embeddings/seen.py): an id no training forward looked up reads a
reserved row (hash, QR, CAFE) that starts at 0 and is never trained (embeddings/reserved.py),
a neutral input as a full table's untrained rows are; every id a training forward looked up
reads exactly what it read without the option; bytes exact."""

from __future__ import annotations

import copy
from typing import Dict, List

import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
from compactrec.embeddings.cafe import build_cafe, cafe_bytes, hash_table, plan_cafe
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.hashing_trick import hash_bytes, plan_hash
from compactrec.embeddings.qr import plan_qr, qr_bytes
from compactrec.embeddings.robe import plan_robe, robe_bytes
from compactrec.embeddings.seen import SeenIds, seen_bytes
from compactrec.trainer.config import CafeConfig, CompressionConfig, EmbeddingConfig, HashConfig, QRConfig, RobeConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

DIM, SMALL = 8, 10
SCHEMA = FeatureSchema("label", (), (SparseFeature("a", 5), SparseFeature("b", 300), SparseFeature("c", 130)))
TRAIN = {"a": [0, 1, 2, 2, 0], "b": [3, 64, 63, 3, 299], "c": [0, 127, 128, 64, 0]}  # a training forward's ids
NEW = {"a": [4, 3, 0, 1, 1], "b": [5, 65, 200, 7, 8], "c": [1, 2, 129, 63, 65]}  # b, c: never trained


def _kjt(ids: Dict[str, List[int]]) -> KeyedJaggedTensor:
    keys = list(ids)
    vals = torch.tensor([i for k in keys for i in ids[k]], dtype=torch.int64)
    return KeyedJaggedTensor(keys=keys, values=vals, lengths=torch.ones(len(vals), dtype=torch.int32))


def test_bits_mark_and_answer_across_word_boundaries():
    seen = SeenIds([70, 130])
    g = torch.tensor([0, 63, 64, 69, 63, 0])
    seen.mark(g)
    seen.mark(seen.global_ids(1, torch.tensor([127, 63, 0])))  # global 197, 133, 70
    known = seen.known(torch.arange(200))
    assert torch.nonzero(known).squeeze(1).tolist() == [0, 63, 64, 69, 70, 133, 197]
    assert seen.bits.dtype == torch.int64 and seen.bits.numel() == 4 == seen_bytes([70, 130]) // 8
    assert int(seen.bits[0]) < 0  # bit 63 set: the sign bit, read back exactly


def test_bits_round_trip_in_state_dict():
    a, b = SeenIds([300]), SeenIds([300])
    a.mark(torch.tensor([5, 299, 128]))
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert torch.equal(b.known(torch.arange(300)), a.known(torch.arange(300)))


def _emb(kind: str, reserve: bool):
    sub = {"hash": {"hash": HashConfig(rows=16, reserve_unseen=reserve)},
           "qr": {"qr": QRConfig(collisions=9, reserve_unseen=reserve)},
           "cafe": {"cafe": CafeConfig(hot_rows=4, reserve_unseen=reserve)},
           "robe": {"robe": RobeConfig(block=4, size=64, reserve_unseen=reserve)},
           "robe_z2": {"robe": RobeConfig(block=2, size=64, reserve_unseen=reserve)}}[kind]
    kind = kind.split("_")[0]
    torch.manual_seed(0)
    return build_embeddings(EmbeddingConfig(kind=kind, small_field_rows=SMALL, **sub), CompressionConfig(), SCHEMA, DIM)


def _reserved_row(emb, kind: str, feature: str) -> torch.Tensor:
    if kind.startswith("robe"):  # every chunk of a new id reads the array's reserved table row
        array = emb.arrays[0]
        return array.weight()[array.reserved_row()]
    if kind == "hash":
        return emb.ebc.embedding_bags[f"hash_{feature}"].weight[-1]
    if kind == "qr":
        return emb.table_weight(f"qr_q_{feature}")[-1] * emb.table_weight(f"qr_r_{feature}")[0]
    return emb.ebc.embedding_bags[hash_table(feature, 0)].weight[-1]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("kind", ["hash", "qr", "cafe", "robe", "robe_z2"])
def test_new_ids_read_the_reserved_row_and_trained_ids_are_unchanged(kind: str, fused: bool):
    on, off = _emb(kind, True), _emb(kind, False)
    with torch.no_grad():  # the same weights (off has no reserved rows: copy the shared part)
        for (name, p), q in zip(on.named_parameters(), off.parameters()):
            p[: q.shape[0]] = q
    on.fused = off.fused = fused
    on(_kjt(TRAIN))  # a training-mode forward marks what it looks up
    on.eval()
    off.eval()
    out_on, out_off = on(_kjt(TRAIN)).to_dict(), off(_kjt(TRAIN)).to_dict()
    for f in ("b", "c"):
        torch.testing.assert_close(out_on[f], out_off[f])  # trained ids: as without the option
    new = on(_kjt(NEW)).to_dict()
    for f in ("b", "c"):
        assert float(_reserved_row(on, kind, f).detach().abs().sum()) == 0.0, f  # zeroed at construction
        for row in new[f]:
            torch.testing.assert_close(row, torch.zeros(DIM), rtol=0, atol=0)
    torch.testing.assert_close(new["a"], off(_kjt(NEW)).to_dict()["a"])  # small features: a full table


@pytest.mark.parametrize("kind", ["hash", "qr", "cafe", "robe", "robe_z2"])
def test_reserved_rows_get_no_gradient_in_training(kind: str):
    emb = _emb(kind, True)
    (emb(_kjt(NEW)).values() * torch.randn(5, 3 * DIM)).sum().backward()  # a training forward: all marked
    for f in ("b", "c"):
        if kind.startswith("robe"):
            grad = emb.arrays[0].weight().grad[emb.arrays[0].reserved_row()]
        elif kind == "hash":
            grad = emb.ebc.embedding_bags[f"hash_{f}"].weight.grad[-1]
        elif kind == "qr":
            grad = emb.table_weight(f"qr_q_{f}").grad[-1]
        else:
            grad = emb.ebc.embedding_bags[hash_table(f, 0)].weight.grad[-1]
        assert float(grad.abs().sum()) == 0.0, f
    torch.optim.Adagrad(emb.parameters(), lr=0.5).step()
    for f in ("b", "c"):
        assert float(_reserved_row(emb, kind, f).detach().abs().sum()) == 0.0, f  # 0 stays 0 after a step
    assert bool(emb.seen.known(emb.seen.global_ids(1 if kind == "hash" else 0, torch.tensor(NEW["b"]))).all())
    assert set(emb.reserved_rows())  # the tables zero_reserved_rows keeps at 0


@pytest.mark.parametrize("ratio", [4.0, 10.0])
def test_bytes_with_reserved_rows_are_exact(ratio: float):
    schema = FeatureSchema("label", (), (SparseFeature("a", 5), SparseFeature("b", 3000), SparseFeature("c", 1300)))
    budget = int(full_embedding_bytes(schema, DIM) / ratio)
    h = HashConfig(reserve_unseen=True)
    plan = plan_hash(schema, DIM, budget, SMALL, h)
    emb = build_embeddings(EmbeddingConfig(kind="hash", small_field_rows=SMALL, hash=h), CompressionConfig(ratio=ratio), schema, DIM)
    assert module_bytes(emb) == hash_bytes(schema, DIM, plan, SMALL, h) <= budget
    for op in ("mult", "concat"):
        q = QRConfig(reserve_unseen=True, operation=op)
        plan = plan_qr(schema, DIM, budget, SMALL, q)
        emb = build_embeddings(EmbeddingConfig(kind="qr", small_field_rows=SMALL, qr=q), CompressionConfig(ratio=ratio), schema, DIM)
        assert module_bytes(emb) == qr_bytes(schema, DIM, plan, SMALL, q) <= budget
        if op == "mult":  # concat's small m (rows half as wide) moves in steps of N/m - N/(m+1)
            assert abs(full_embedding_bytes(schema, DIM) / module_bytes(emb) / ratio - 1) < 0.05
    c = CafeConfig(reserve_unseen=True)
    plan = plan_cafe(schema, DIM, budget, c, SMALL)
    emb = build_cafe(schema, DIM, c, SMALL, budget)
    assert module_bytes(emb) == cafe_bytes(plan, schema, DIM, c, SMALL) <= budget
    for block in (4, 2):  # pooled and packed arrays: + the bits and one table row each
        r = RobeConfig(block=block, reserve_unseen=True)
        plan = plan_robe(schema, DIM, budget, r, SMALL)
        emb = build_embeddings(EmbeddingConfig(kind="robe", small_field_rows=SMALL, robe=r), CompressionConfig(ratio=ratio), schema, DIM)
        assert module_bytes(emb) == robe_bytes(schema, DIM, r, plan, SMALL) <= budget
        off = plan_robe(schema, DIM, budget, RobeConfig(block=block, reserve_unseen=False), SMALL)
        assert sum(off.rows) > sum(plan.rows)  # the reserve's bytes come out of the array


def test_unset_reserve_is_decided_by_the_budget(capsys):
    """reserve_unseen unset (the default): on while the id bits fit a tenth of the budget
    (MovieLens-like ratios), off with a log line beyond; an explicit flag always stays."""
    from compactrec.embeddings.seen import AUTO_BUDGET_SHARE, decide_reserve

    cards = [6400]  # 100 words: 800 bytes of bits
    assert decide_reserve(None, None, cards) and decide_reserve(None, 8000, cards)
    assert not decide_reserve(None, 7999, cards) and AUTO_BUDGET_SHARE == 0.1
    assert decide_reserve(True, 1, cards) and not decide_reserve(False, 10**9, cards)
    schema = FeatureSchema("label", (), (SparseFeature("a", 5), SparseFeature("b", 3000), SparseFeature("c", 1300)))
    for kind in ("hash", "qr", "cafe"):
        emb = build_embeddings(EmbeddingConfig(kind=kind, small_field_rows=SMALL), CompressionConfig(ratio=10), schema, DIM)
        assert emb.seen is not None and emb.reserved_rows(), kind  # 10x at dim 8: the bits are ~4% of the budget
        assert "reserve_unseen off" not in capsys.readouterr().out
    # at 400x the bits (4305 ids: 544 B) exceed a tenth of the budget (~344 B): built without them
    emb = build_embeddings(EmbeddingConfig(kind="hash", small_field_rows=SMALL), CompressionConfig(ratio=400), schema, DIM)
    assert emb.seen is None and not emb.reserved_rows()
    assert "hash: reserve_unseen off: its id bits (544 B)" in capsys.readouterr().out
    forced = EmbeddingConfig(kind="hash", small_field_rows=SMALL, hash=HashConfig(reserve_unseen=True))
    assert build_embeddings(forced, CompressionConfig(ratio=10), schema, DIM).seen is not None
