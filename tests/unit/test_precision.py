"""``embedding.precision``: every method's tables at fp16 within the same byte budget (so with
more rows), exact byte accounting, fp32 outputs, the fused kernels agreeing with the
collection path on fp16 tables, the optimizer state counted, and bf16 refused on CPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchrec.modules.embedding_configs import DataType
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.embeddings.accounting import embedding_report, full_embedding_bytes, module_bytes
from compactrec.embeddings.budget import BudgetError
from compactrec.embeddings.factory import build_embeddings, reachable_ratio
from compactrec.embeddings.precision import check_precision, collections, sparse_optimizer_state_bytes
from compactrec.trainer.config import CompressionConfig, ConfigError, load_config

SCHEMA = FeatureSchema("label", ("int_0",), tuple(SparseFeature(f"cat_{i}", c, multi_hot=True) for i, c in
                                                 enumerate([5000, 3000, 800, 120, 40])))
DIM = 16
METHODS = ["hash", "qr", "memcom", "mixed_dim", "cafe", "robe"]


def _counts():
    g = np.random.default_rng(0)
    return {f.name: g.zipf(1.2, f.cardinality).astype(np.int64) for f in SCHEMA.sparse}


def _build(kind: str, precision: str, ratio: float = 4, device=None):
    cfg = load_config(None, [f"embedding.kind={kind}", f"embedding.precision={precision}"]).embedding
    return build_embeddings(cfg, CompressionConfig(ratio=ratio), SCHEMA, DIM, device, _counts)


def _rows(emb) -> int:
    return sum(c.num_embeddings for _, configs, _ in collections(emb) for c in configs)


def _kjt(seed: int = 0) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, 4, (len(SCHEMA.sparse) * 8,), generator=g)
    values = torch.cat([torch.randint(0, f.cardinality, (int(lengths[i * 8:(i + 1) * 8].sum()),), generator=g)
                        for i, f in enumerate(SCHEMA.sparse)])
    return KeyedJaggedTensor.from_lengths_sync(SCHEMA.sparse_names, values, lengths)


@pytest.mark.parametrize("kind", METHODS)
def test_fp16_tables_fill_the_same_budget_with_more_rows(kind: str):
    budget = full_embedding_bytes(SCHEMA, DIM) // 4
    at32, at16 = _build(kind, "fp32", device=torch.device("meta")), _build(kind, "fp16", device=torch.device("meta"))
    # the solver spends the bytes the fp32 planner would leave: within 3% of the budget, never above
    assert 0.97 * budget <= module_bytes(at16) <= budget
    assert _rows(at16) > 1.3 * _rows(at32), (_rows(at16), _rows(at32))
    for _, configs, tables in collections(at16):
        assert {c.data_type for c in configs} == {DataType.FP16}
        assert {t.weight.dtype for t in tables.values()} == {torch.float16}
    # exact accounting: 2 bytes per stored table value, the rest (id maps, projections, sketch) as it is
    weights = [t.weight for _, _, tables in collections(at16) for t in tables.values()]
    other = sum(t.numel() * t.element_size() for t in at16.state_dict(keep_vars=True).values()
                if not any(t is w for w in weights))
    assert module_bytes(at16) == 2 * sum(w.numel() for w in weights) + other


def test_a_full_table_at_fp16_is_2x():
    emb = _build("full", "fp16")
    assert embedding_report(emb, SCHEMA, DIM)["compression_ratio"] == 2.0


@pytest.mark.parametrize("kind", METHODS)
def test_fp16_outputs_are_fp32_and_the_fused_kernels_agree_with_the_collections(kind: str):
    torch.manual_seed(0)
    emb = _build(kind, "fp16")
    kjt = _kjt()
    emb.fused = True
    fused = emb(kjt).values()
    fused.sum().backward()
    grads = {n: p.grad.clone() for n, p in emb.named_parameters() if p.grad is not None}
    emb.zero_grad(set_to_none=True)
    emb.fused = False
    plain = emb(kjt).values()
    plain.sum().backward()
    assert fused.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(fused, plain, rtol=2e-3, atol=2e-3)
    tables = {n: p for n, p in emb.named_parameters() if p.dtype == torch.float16}
    assert tables and any(p.grad.abs().sum() > 0 for p in tables.values()), f"{kind}: no gradient reached the tables"
    for n, p in tables.items():  # (mixed-dim's head block and CAFE's hot rows see no id of this batch)
        torch.testing.assert_close(grads[n].float(), p.grad.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("sparse,per_row,per_value", [("rowwise_adagrad", 1, 0), ("adagrad", 0, 1), ("sgd", 0, 0)])
def test_the_sparse_optimizer_state_is_counted_in_fp32(sparse: str, per_row: int, per_value: int):
    emb = _build("memcom", "fp16", device=torch.device("meta"))
    expect = sum(c.num_embeddings * (per_row + per_value * c.embedding_dim) * 4
                 for _, configs, _ in collections(emb) for c in configs)
    assert sparse_optimizer_state_bytes(emb, sparse) == expect
    report = embedding_report(emb, SCHEMA, DIM, sparse)
    assert report["sparse_optimizer_state_bytes"] == expect
    assert (expect > 0) == (sparse != "sgd")


def test_fp16_reaches_further_and_says_at_which_precision():
    cfg32 = load_config(None, ["embedding.kind=memcom"]).embedding
    cfg16 = load_config(None, ["embedding.kind=memcom", "embedding.precision=fp16"]).embedding
    best32, best16 = reachable_ratio(cfg32, SCHEMA, DIM), reachable_ratio(cfg16, SCHEMA, DIM)
    assert best16 > 1.5 * best32
    with pytest.raises(BudgetError, match=rf"reaches at most {best16:.1f}x here at embedding.precision=fp16"):
        build_embeddings(cfg16, CompressionConfig(ratio=best16 * 1.5), SCHEMA, DIM, torch.device("meta"))


def test_bf16_is_refused_on_cpu_and_unknown_names_by_the_config():
    with pytest.raises(ValueError, match="embedding.precision=bf16 on cpu: FBGEMM has no CPU kernels"):
        check_precision("bf16", torch.device("cpu"))
    check_precision("bf16", torch.device("cuda"))  # FBGEMM trains bf16 tables on CUDA
    check_precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="embedding.precision='int8': must be one of fp32, fp16, bf16"):
        load_config(None, ["embedding.precision=int8"])
