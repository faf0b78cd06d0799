"""MEmCom (Pansare et al., MLSys 2022): e(i) = w[i] * E[h(i) mod m] (+ b[i]).

A hashed shared table E (m x d) per feature and ONE trainable scalar per entity w[i]
(optionally a scalar bias b[i]), trained jointly: ids that share a hashed row are told
apart by their own scale. Params m*d + N (+ N), so the ratio N*d / (m*d + N) stays below d:
a request at or above d is an error, not a silent overshoot.

Open choices (the paper's abstract leaves them open; all are ``MemComConfig`` knobs):
splitmix64 hash; w starts at 0.0; no bias by default; m per feature proportional to its
cardinality. Why w = 0: an entity that training never saw (a new user under a time split)
then embeds to 0, as its untrained row of a full table would (near 0); with w = 1 it reads
the hashed row that other entities trained. On MovieLens-100K at 10x that moved test AUC from
0.681 to 0.708 (the full table's 0.708); on NYC flights, where 87% of test rows are warm,
0.689 -> 0.685 (3 seeds, within their spread); docs/quality.md. E still learns: its gradient
w * g is 0 only until the first step moves w (Adagrad's first step is lr-sized).

Layout: the scale table is stored ``pack`` (default 4) entities per row, shape
(ceil(N / pack), pack), so it is an ordinary embedding table of width 4 that FBGEMM accepts
on GPU and that TorchRec shards row-wise like any large table; w[i] is element i % pack of
row i // pack. With rowwise Adagrad the ``pack`` entities of a row share one accumulator
(a documented approximation; elementwise optimizers are unaffected).
Per-sample weights of a weighted EBC are not differentiable across ranks (docs/stack.md), so the
scale is looked up as its own unpooled collection and applied per id before pooling.

Example::

    emb = build_memcom(schema, 32, MemComConfig(), small_field_rows=200, budget=b)
    kt = emb(kjt)       # KeyedTensor, values (B, F * 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import FP32
from compactrec.embeddings.base import (
    CompressedEmbedding, full_config, is_local, join_rows, split_features, split_kjt, table_device, value_keys,
)
from compactrec.embeddings.budget import BudgetError, full_table_bytes, proportional_rows
from compactrec.trainer.config import MemComConfig
from compactrec.data.reader.manifest import FeatureSchema


@dataclass
class MemComPlan:
    rows: Dict[str, int]  # compressed feature -> m, rows of its shared hashed table


def scale_rows(n: int, pack: int) -> int:
    return -(-n // pack)


class MemComEmbedding(CompressedEmbedding):
    def __init__(
        self, schema: FeatureSchema, dim: int, cfg: MemComConfig, plan: MemComPlan, small_field_rows: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        self.cfg = cfg
        small, big = split_features(schema, small_field_rows)
        self.small = [f.name for f in small]
        self.big = [f.name for f in big]
        self.full = EmbeddingBagCollection(tables=[full_config(f, dim) for f in small], device=table_device(device)) if small else None
        shared: List[EmbeddingConfig] = []
        scales: List[EmbeddingConfig] = []
        for f in big:
            bound = math.sqrt(1.0 / f.cardinality)  # a full table's scale: w * E is at it once w ~ 1
            shared.append(_table(f"memcom_E_{f.name}", f"{f.name}__E", plan.rows[f.name], dim, -bound, bound))
            n = scale_rows(f.cardinality, cfg.pack)
            scales.append(_table(f"memcom_w_{f.name}", f"{f.name}__w", n, cfg.pack, cfg.scale_init, cfg.scale_init))
            if cfg.bias:
                scales.append(_table(f"memcom_b_{f.name}", f"{f.name}__b", n, cfg.pack, 0.0, 0.0))
        self.shared = EmbeddingCollection(tables=shared, device=table_device(device))
        self.scales = EmbeddingCollection(tables=scales, device=table_device(device))
        self.rows_of = [plan.rows[n] for n in self.big]  # m per compressed feature (host ints: no device read)
        self.register_buffer("_rows_t", torch.tensor(self.rows_of, dtype=torch.int64, device=device), persistent=False)
        # The fused op indexes scales by the id it is given: identity hashing with m < N
        # (a test mode) would need ids % m for the rows but raw ids for the scales.
        self._fusable = cfg.hash != "identity" or all(plan.rows[f.name] >= f.cardinality for f in big)

    def _embed_fused(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: one fused hash_scale_bag per feature on the tables' weights."""
        from compactrec.kernels import hash_scale_bag

        jts = features.to_dict()
        out: Dict[str, torch.Tensor] = {}
        if self.full is not None:
            out.update(self.full(KeyedJaggedTensor.from_jt_dict({n: jts[n] for n in self.small})).to_dict())
        identity = self.cfg.hash == "identity"
        for j, name in enumerate(self.big):
            jt, m = jts[name], self.rows_of[j]
            ids = jt.values().to(torch.int64)
            bias = self.scales.embeddings[f"memcom_b_{name}"].weight.view(-1) if self.cfg.bias else None
            out[name] = hash_scale_bag(
                ids, jt.offsets(), self.shared.embeddings[f"memcom_E_{name}"].weight,
                self.scales.embeddings[f"memcom_w_{name}"].weight.view(-1), bias,
                num_rows=m, seed=self.cfg.seed, hashed=not identity,
            )
        return out

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: the fused op. Sharded (DMP): TorchRec looks up the hashed rows and the
        scales; ``scale_pool`` composes them per id and pools (compose before pool)."""
        if self.fused and self._fusable and is_local(self.full, self.shared, self.scales):
            return self._embed_fused(features)
        from compactrec.kernels import hash_remap, scale_pool

        small, big = split_kjt(features, self.small, self.big)
        out: Dict[str, torch.Tensor] = {}
        if self.full is not None:
            out.update(self.full(small).to_dict())
        if big is None:
            return out
        # Every compressed feature at once: one hash, one division, one lookup per
        # collection, one compose + pool over the F_c * B bags (key-major, as the KJT).
        ids, lengths = big.values().to(torch.int64), big.lengths()
        moduli = self._rows_t[value_keys(big)]  # (nnz,): m of each value's feature
        hashed = ids % moduli if self.cfg.hash == "identity" else hash_remap(ids, moduli, seed=self.cfg.seed)
        per_key = big.length_per_key()
        rows = self.shared(KeyedJaggedTensor(
            keys=[f"{n}__E" for n in self.big], values=hashed, lengths=lengths, length_per_key=per_key,
        ))
        pack = self.cfg.pack
        scale_ids = torch.div(ids, pack, rounding_mode="floor")
        scale_keys = [f"{n}__w" for n in self.big] + ([f"{n}__b" for n in self.big] if self.cfg.bias else [])
        reps = 2 if self.cfg.bias else 1
        looked = self.scales(KeyedJaggedTensor(
            keys=scale_keys, values=scale_ids.repeat(reps), lengths=lengths.repeat(reps), length_per_key=per_key * reps,
        ))
        col = (ids % pack).unsqueeze(1)  # w[i] is element i % pack of scale row i // pack
        e = join_rows([rows[f"{n}__E"].values() for n in self.big])  # (nnz, d)
        w = join_rows([looked[f"{n}__w"].values() for n in self.big]).gather(1, col).squeeze(1)  # (nnz,)
        b = join_rows([looked[f"{n}__b"].values() for n in self.big]).gather(1, col).squeeze(1) if self.cfg.bias else None
        # (F_c * B, d): sum_j w_j E[h(i_j)] (+ b_j) per bag; w separates ids sharing a row
        pooled = scale_pool(e, big.offsets(), w, b)
        out.update(zip(self.big, pooled.split(big.stride())))
        return out


def _table(name: str, feature: str, rows: int, dim: int, lo: float, hi: float) -> EmbeddingConfig:
    return EmbeddingConfig(
        name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[feature],
        weight_init_min=lo, weight_init_max=hi,
    )


def _scale_bytes(schema: FeatureSchema, cfg: MemComConfig, small_field_rows: int) -> int:
    _, big = split_features(schema, small_field_rows)
    per_entity = 2 if cfg.bias else 1
    return sum(scale_rows(f.cardinality, cfg.pack) for f in big) * cfg.pack * per_entity * FP32


def memcom_bytes(schema: FeatureSchema, dim: int, cfg: MemComConfig, plan: MemComPlan, small_field_rows: int) -> int:
    small, _ = split_features(schema, small_field_rows)
    shared = sum(plan.rows.values()) * dim * FP32
    return full_table_bytes(small, dim) + shared + _scale_bytes(schema, cfg, small_field_rows)


def plan_memcom(schema: FeatureSchema, dim: int, budget: int, cfg: MemComConfig, small_field_rows: int) -> MemComPlan:
    small, big = split_features(schema, small_field_rows)
    fixed = full_table_bytes(small, dim) + _scale_bytes(schema, cfg, small_field_rows)
    left = budget - fixed - len(big) * dim * FP32  # at least one shared row per feature
    if left < 0:
        ceiling = full_table_bytes(schema.sparse, dim) / (fixed + len(big) * dim * FP32)
        raise BudgetError(
            f"memcom cannot reach this ratio: with its per-entity scales it reaches at most {ceiling:.1f}x "
            f"(MEmCom's ratio N*d / (m*d + N) is always below d = {dim})"
        )
    return MemComPlan(rows=proportional_rows(big, (budget - fixed) // (dim * FP32)))


def build_memcom(
    schema: FeatureSchema, dim: int, cfg: MemComConfig, small_field_rows: int, budget: Optional[int],
    device: Optional[torch.device] = None,
) -> MemComEmbedding:
    _, big = split_features(schema, small_field_rows)
    if cfg.pack < 1:
        raise ValueError(f"embedding.memcom.pack must be >= 1, got {cfg.pack}")
    if cfg.rows is not None:
        plan = MemComPlan({f.name: min(cfg.rows, f.cardinality) for f in big})
    elif budget is not None:
        plan = plan_memcom(schema, dim, budget, cfg, small_field_rows)
    else:
        raise BudgetError("memcom: set compression.ratio / compression.bytes or embedding.memcom.rows")
    return MemComEmbedding(schema, dim, cfg, plan, small_field_rows, device)
