"""The one-hot fast path of QR, MEmCom and mixed-dim (docs/speed.md): features the schema
says are one-hot keep their compressed tables in the pooled EmbeddingBagCollection and
compose after pooling. On one-hot data (an empty bag included) it must give exactly what the
unpooled compose-then-pool path gives (outputs and every table's gradient), with the same
bytes; multi-hot features keep the unpooled path; a multi-id bag on a one-hot feature is an
error, not a silently wrong pool-then-compose."""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import module_bytes
from compactrec.embeddings.factory import build_embeddings
from compactrec.trainer.config import CompressionConfig, MemComConfig, MixedDimConfig, QRConfig, load_config
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

DIM, SMALL, BATCH = 6, 10, 9
CARDS = {"a": 5, "b": 50, "c": 37}  # "a" keeps a full table


def _schema(multi: str = "") -> FeatureSchema:
    """The features named in ``multi`` multi-hot, the rest one-hot."""
    return FeatureSchema("label", (), tuple(SparseFeature(n, c, multi_hot=n in multi) for n, c in CARDS.items()))


def _counts() -> Dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {n: g.zipf(1.3, c).astype(np.int64) for n, c in CARDS.items()}


CASES = [
    ("qr", {"qr": QRConfig(operation="mult", collisions=4)}),
    ("qr", {"qr": QRConfig(operation="add", collisions=7)}),
    ("qr", {"qr": QRConfig(operation="concat", collisions=3)}),
    ("qr", {"qr": QRConfig(operation="mult", collisions=5, reserve_unseen=True)}),
    ("memcom", {"memcom": MemComConfig(rows=5, bias=True)}),
    ("memcom", {"memcom": MemComConfig(rows=60, hash="identity", pack=3)}),
    ("mixed_dim", {"mixed_dim": MixedDimConfig(alpha=1.5, num_blocks=3)}),  # packed 1-wide blocks
    ("mixed_dim", {"mixed_dim": MixedDimConfig(alpha=0.3, num_blocks=4)}),  # 2-wide ones too
    ("mixed_dim", {"mixed_dim": MixedDimConfig(blocks="table", alpha=0.8, threshold=SMALL)}),
]
IDS = [f"{k}-{i}" for i, (k, _) in enumerate(CASES)]


def test_the_cases_cover_both_packed_widths():
    for case, width in ((CASES[6], 1), (CASES[7], 2)):
        emb = _build(*case, _schema())
        assert emb._pooled_groups[width - 1], f"{case}: no pooled packed block of width {width}"


def _build(kind: str, sub: Dict, schema: FeatureSchema):
    cfg = load_config(None, [f"embedding.kind={kind}", f"embedding.small_field_rows={SMALL}"]).embedding
    for k, v in sub.items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    emb = build_embeddings(cfg, CompressionConfig(), schema, DIM, counts=_counts)
    emb.fused = False  # the collection path (the one DMP runs)
    return emb


def _tables(emb) -> Dict[str, torch.nn.Parameter]:
    """Parameters by table name (wherever the table lives), projections by their own name."""
    return {n.split(".")[-2] if n.endswith(".weight") else n: p for n, p in emb.named_parameters()}


def _same_weights(src, dst) -> None:
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in _tables(src).items():
            p.normal_()  # no accidental symmetry (all-ones or all-zero scales)
            _tables(dst)[name].copy_(p)


def _kjt(bags: Dict[str, List[List[int]]]) -> KeyedJaggedTensor:
    keys = list(bags)
    values = [i for k in keys for bag in bags[k] for i in bag]
    lengths = [len(bag) for k in keys for bag in bags[k]]
    return KeyedJaggedTensor(keys=keys, values=torch.tensor(values, dtype=torch.int64),
                             lengths=torch.tensor(lengths, dtype=torch.int32))


def _one_hot_bags(seed: int, multi: str = "") -> KeyedJaggedTensor:
    """One id per bag, an empty bag in b and in c (the features in ``multi``: bags of 0-4)."""
    g = np.random.default_rng(seed)
    bags = {}
    for n, c in CARDS.items():
        sizes = g.integers(0, 5, BATCH) if n in multi else np.ones(BATCH, dtype=int)
        bags[n] = [[int(i) for i in g.integers(0, c, s)] for s in sizes]
        bags[n][-1] = [c - 1]  # the last row
    bags["b"][2], bags["c"][5] = [], []
    return _kjt(bags)


def _step(emb, kjt: KeyedJaggedTensor, weight: torch.Tensor):
    emb.zero_grad()
    out = emb(kjt).values()
    (out * weight).sum().backward()
    return out.detach(), {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in _tables(emb).items()}


def _collection_of(emb, table: str) -> type:
    for m in emb.children():
        if isinstance(m, EmbeddingBagCollection) and table in m.embedding_bags:
            return EmbeddingBagCollection
        if isinstance(m, EmbeddingCollection) and table in m.embeddings:
            return EmbeddingCollection
    raise KeyError(table)


def _compressed_tables(emb, feature: str) -> List[str]:
    return [n for n in _tables(emb) if n.endswith(f"_{feature}") or f"_{feature}_b" in n]


@pytest.mark.parametrize("kind,sub", CASES, ids=IDS)
def test_pooled_path_equals_the_unpooled_path_on_one_hot_data(kind: str, sub: Dict):
    fast, slow = _build(kind, sub, _schema()), _build(kind, sub, _schema(multi="bc"))
    _same_weights(fast, slow)
    kjt = _one_hot_bags(0)
    weight = torch.randn(BATCH, 3 * DIM)
    (out_f, grad_f), (out_s, grad_s) = _step(fast, kjt, weight), _step(slow, kjt, weight)
    torch.testing.assert_close(out_f, out_s, rtol=1e-5, atol=1e-6)
    assert set(grad_f) == set(grad_s)
    for name in grad_s:
        torch.testing.assert_close(grad_f[name], grad_s[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    n = max(CARDS.values())  # every id of every feature, one per bag: every parameter trains
    _, grad_all = _step(fast, _kjt({f: [[i % c] for i in range(n)] for f, c in CARDS.items()}), torch.randn(n, 3 * DIM))
    for name, g in grad_all.items():
        assert bool(g.abs().sum() > 0), f"no gradient reaches {name}"
    e = out_f.view(BATCH, 3, DIM)
    assert float(e[2, 1].abs().sum()) == 0.0 and float(e[5, 2].abs().sum()) == 0.0  # the empty bags
    # layouts: one-hot compressed tables pooled, multi-hot ones unpooled (packed mixed-dim
    # blocks; its wide blocks are pooled in both); the same bytes either way
    for f in "bc":
        assert {_collection_of(fast, t) for t in _compressed_tables(fast, f)} == {EmbeddingBagCollection}
        slow_kinds = {_collection_of(slow, t) for t in _compressed_tables(slow, f)}
        assert EmbeddingCollection in slow_kinds or (kind == "mixed_dim" and not slow.narrow_width)
    assert module_bytes(fast) == module_bytes(slow)


@pytest.mark.parametrize("kind,sub", CASES, ids=IDS)
def test_one_hot_and_multi_hot_features_together(kind: str, sub: Dict):
    """b one-hot (pooled path), c multi-hot (unpooled): the same as both unpooled."""
    mixed, slow = _build(kind, sub, _schema(multi="c")), _build(kind, sub, _schema(multi="bc"))
    _same_weights(mixed, slow)
    kjt = _one_hot_bags(1, multi="c")
    weight = torch.randn(BATCH, 3 * DIM)
    (out_m, grad_m), (out_s, grad_s) = _step(mixed, kjt, weight), _step(slow, kjt, weight)
    torch.testing.assert_close(out_m, out_s, rtol=1e-5, atol=1e-6)
    for name in grad_s:
        torch.testing.assert_close(grad_m[name], grad_s[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind,sub", [c for c in CASES if not (c[0] == "qr" and c[1]["qr"].operation == "concat")],
                         ids=[i for i, c in zip(IDS, CASES) if not (c[0] == "qr" and c[1]["qr"].operation == "concat")])
def test_fused_kernels_read_the_pooled_tables(kind: str, sub: Dict):
    """Unsharded, the fused ops (compactrec.kernels) run on the tables' weights wherever the
    one-hot layout keeps them: the same outputs and gradients as the collection path."""
    emb = _build(kind, sub, _schema())
    _same_weights(emb, emb)
    kjt, weight = _one_hot_bags(2), torch.randn(BATCH, 3 * DIM)
    emb.fused = True
    out_k, grad_k = _step(emb, kjt, weight)
    emb.fused = False
    out_c, grad_c = _step(emb, kjt, weight)
    torch.testing.assert_close(out_k, out_c, rtol=1e-5, atol=1e-5)
    for name in grad_c:
        torch.testing.assert_close(grad_k[name], grad_c[name], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("kind,sub", [CASES[0], CASES[4], CASES[6]], ids=["qr", "memcom", "mixed_dim"])
def test_a_multi_id_bag_on_a_one_hot_feature_is_an_error(kind: str, sub: Dict):
    emb = _build(kind, sub, _schema())
    with pytest.raises(ValueError, match="one-hot in the schema"):
        emb(_one_hot_bags(3, multi="b"))


def test_qr_multi_hot_feature_still_composes_before_pooling():
    """On a multi-hot bag the per-id composition differs from pooling W_q and W_r first."""
    emb = _build("qr", {"qr": QRConfig(collisions=4)}, _schema(multi="b"))
    assert _collection_of(emb, "qr_q_b") is EmbeddingCollection and _collection_of(emb, "qr_q_c") is EmbeddingBagCollection
    _same_weights(emb, emb)
    q, r = emb.table_weight("qr_q_b"), emb.table_weight("qr_r_b")
    s = emb.scattered(0, torch.tensor([1, 6]))
    (q1, q6), (r1, r6) = s.div(4, rounding_mode="floor").tolist(), (s % 4).tolist()
    got = emb(_kjt({"a": [[0]], "b": [[1, 6]], "c": [[2]]}))["b"][0]
    torch.testing.assert_close(got, q[q1] * r[r1] + q[q6] * r[r6])
    assert not torch.allclose(got, (q[q1] + q[q6]) * (r[r1] + r[r6]))
