"""Every method's forward and backward on a device other than the CPU mixes no devices.

The model is built on the audit device (``tests/device_audit.py``: real values that report
``meta``) and run under the audit, training mode, two steps (so CAFE's sketch inserts and
migrates), through the fused ops (unsharded) and through the collection path that DMP's
sharded modules run; any aten op that mixes a host tensor with a device one, and any
collective handed a host tensor, fails the test with the op named.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np
import pytest
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.embeddings.factory import build_embeddings
from compactrec.trainer.config import CafeConfig, CompressionConfig, EmbeddingConfig, HashConfig, QRConfig
from tests.device_audit import AUDIT_DEVICE, DeviceAudit, Tagged

SCHEMA = FeatureSchema(
    label="label", dense=("d0",),
    sparse=(SparseFeature("a", 5), SparseFeature("b", 300), SparseFeature("c", 211), SparseFeature("m", 257, True)),
)
DIM = 16
METHODS = ["full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe"]


def _counts() -> Dict[str, np.ndarray]:
    g = np.random.default_rng(0)
    return {f.name: g.zipf(1.3, f.cardinality).astype(np.int64) for f in SCHEMA.sparse}


def _kjt(seed: int, batch: int = 16) -> KeyedJaggedTensor:
    g = np.random.default_rng(seed)
    values: List[int] = []
    lengths: List[int] = []
    for f in SCHEMA.sparse:
        for _ in range(batch):
            n = int(g.integers(0, 4)) if f.multi_hot else 1
            values += [int(v) for v in g.integers(0, f.cardinality, n)]
            lengths.append(n)
    return KeyedJaggedTensor(
        keys=SCHEMA.sparse_names,
        values=torch.tensor(values, dtype=torch.int64, device=AUDIT_DEVICE),
        lengths=torch.tensor(lengths, dtype=torch.int32, device=AUDIT_DEVICE),
    )


def _build(kind: str, reserve: bool = False):
    """Under the audit: the method on the audit device. TorchRec leaves tables built on meta
    uninitialised (DMP fills them), so they get values here. ``reserve``: reserve_unseen on."""
    cfg = EmbeddingConfig(kind=kind, small_field_rows=10, hash=HashConfig(reserve_unseen=reserve),
                          qr=QRConfig(reserve_unseen=reserve),
                          cafe=CafeConfig(threshold=0.5, importance="grad_norm", reserve_unseen=reserve))
    emb = build_embeddings(cfg, CompressionConfig(ratio=3.0), SCHEMA, DIM, device=AUDIT_DEVICE, counts=_counts)
    with torch.no_grad():
        for p in emb.parameters():
            p.uniform_(-0.5, 0.5)
    return emb


def test_the_audit_catches_a_host_index_and_passes_a_stock_lookup():
    with DeviceAudit() as audit:
        moduli = torch.tensor([3, 5], device=AUDIT_DEVICE)
        torch.repeat_interleave(moduli, torch.tensor([2, 1]))  # the hashing trick's old pattern
    assert audit.ops() == ["aten.index_select.default"]
    with DeviceAudit() as audit:
        emb = _build("full")
        emb(_kjt(0)).values().sum().backward()
    assert audit.mixed == []


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "collections"])
@pytest.mark.parametrize("kind", METHODS)
def test_forward_and_backward_stay_on_the_device(kind: str, fused: bool):
    with DeviceAudit() as audit:
        emb = _build(kind)
        emb.fused = fused
        emb.train()
        for step in range(2):
            out = emb(_kjt(step)).values()
            assert isinstance(out, Tagged) and out.shape == (16, DIM * len(SCHEMA.sparse))
            out.square().sum().backward()
        if kind == "cafe":
            assert emb.flush() >= 0 and int((emb.sketch.owner >= 0).sum()) > 0  # promotions ran
    assert audit.mixed == [], audit.mixed


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "collections"])
@pytest.mark.parametrize("kind", ["hash", "qr", "cafe"])
def test_reserved_rows_for_unseen_ids_stay_on_the_device(kind: str, fused: bool):
    """reserve_unseen: marking in training forwards, routing of never-seen ids in eval."""
    with DeviceAudit() as audit:
        emb = _build(kind, reserve=True)
        emb.fused = fused
        emb.train()
        emb(_kjt(0)).values().square().sum().backward()
        emb.eval()
        out = emb(_kjt(7)).values()  # other ids: some never marked
        assert isinstance(out, Tagged) and out.shape == (16, DIM * len(SCHEMA.sparse))
    assert audit.mixed == [], audit.mixed


def test_sharded_cafe_routing_sketch_and_migration_stay_on_the_device(one_rank_group):
    """The sharded sketch's own code (owner routing, all_to_all queries, inserts with global
    rounds and decay, row migration through HashRowReader) on a 1-rank group."""
    from compactrec.embeddings.cafe import HOT_TABLE
    from compactrec.sharding.cafe import ShardedCafeSketch

    with DeviceAudit() as audit:
        emb = _build("cafe")
        hot = emb.ebc.embedding_bags[HOT_TABLE].weight.data
        router = ShardedCafeSketch(emb, [(0, emb.plan.hot_rows)], hot, one_rank_group)
        emb.sketch, emb.router = router.local, router
        emb.train()
        for step in range(3):
            emb(_kjt(step)).values().square().sum().backward()
        assert emb.flush() >= 0 and int((router.local.owner >= 0).sum()) > 0  # promotions ran
    assert audit.mixed == [], audit.ops()

