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
Per-sample weights of a weighted EBC are not differentiable across ranks (docs/stack.md), so for
multi-hot features the scale is looked up as its own unpooled collection and applied per id
before pooling. One-hot features (the schema's ``multi_hot`` False: bags of at most one id)
take a fast path: E, w (and b) are pooled tables of ONE ``EmbeddingBagCollection`` with the
small features' full tables; a bag's pooled scale row is its id's row (0 for an empty bag),
its slot i % pack is picked per bag, and w * E (+ b) is composed after pooling, which is
exact there (an empty bag gives 0 * 0 + 0). FBGEMM's pooled CPU backward costs a fraction of
the unpooled one (docs/speed.md).

Example::

    emb = build_memcom(schema, 32, MemComConfig(), small_field_rows=200, budget=b)
    kt = emb(kjt)       # KeyedTensor, values (B, F * 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import FP32
from compactrec.embeddings.base import (
    CompressedEmbedding, check_one_hot, embed_pooled_and_multi, full_config, group_columns, is_local, join_rows,
    one_hot_split, per_bag, split_features, table_device, value_keys,
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
        self.onehot, self.multi = one_hot_split(big)  # pooled fast path / unpooled compose-then-pool
        shared: List[EmbeddingConfig] = []
        scales: List[EmbeddingConfig] = []
        pooled: Dict[str, List[EmbeddingBagConfig]] = {"E": [], "w": [], "b": []}
        for f in big:
            bound = math.sqrt(1.0 / f.cardinality)  # a full table's scale: w * E is at it once w ~ 1
            n = scale_rows(f.cardinality, cfg.pack)
            specs = [("E", plan.rows[f.name], dim, -bound, bound), ("w", n, cfg.pack, cfg.scale_init, cfg.scale_init)]
            if cfg.bias:
                specs.append(("b", n, cfg.pack, 0.0, 0.0))
            for part, rows, width, lo, hi in specs:
                args = (f"memcom_{part}_{f.name}", f"{f.name}__{part}", rows, width, lo, hi)
                if not f.multi_hot:
                    pooled[part].append(_bag(*args))
                else:
                    (shared if part == "E" else scales).append(_table(*args))
        # Table order = the pooled output's key order: small features, all E, all w, all b.
        bags = [full_config(f, dim) for f in small] + pooled["E"] + pooled["w"] + pooled["b"]
        self.ebc = EmbeddingBagCollection(tables=bags, device=table_device(device)) if bags else None
        self.shared = EmbeddingCollection(tables=shared, device=table_device(device)) if shared else None
        self.scales = EmbeddingCollection(tables=scales, device=table_device(device)) if scales else None
        at = lambda names: torch.tensor([self.big.index(n) for n in names], dtype=torch.int64, device=device)  # noqa: E731
        self.register_buffer("_onehot_at", at(self.onehot), persistent=False)  # indices into ``big``
        self.register_buffer("_multi_at", at(self.multi), persistent=False)
        self.rows_of = [plan.rows[n] for n in self.big]  # m per compressed feature (host ints: no device read)
        self.register_buffer("_rows_t", torch.tensor(self.rows_of, dtype=torch.int64, device=device), persistent=False)
        # The fused op indexes scales by the id it is given: identity hashing with m < N
        # (a test mode) would need ids % m for the rows but raw ids for the scales.
        self._fusable = cfg.hash != "identity" or all(plan.rows[f.name] >= f.cardinality for f in big)

    def _embed_fused(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: one fused hash_scale_bag per feature on the tables' weights."""
        from compactrec.kernels import hash_scale_bag

        jts = features.to_dict()
        out: Dict[str, torch.Tensor] = {  # small features' full tables: a plain bag on their weights
            n: hash_scale_bag(jts[n].values(), jts[n].offsets(), self.table_weight(f"t_{n}"), hashed=False)
            for n in self.small
        }
        identity = self.cfg.hash == "identity"
        for j, name in enumerate(self.big):
            jt, m = jts[name], self.rows_of[j]
            ids = jt.values().to(torch.int64)
            bias = self.table_weight(f"memcom_b_{name}").view(-1) if self.cfg.bias else None
            out[name] = hash_scale_bag(
                ids, jt.offsets(), self.table_weight(f"memcom_E_{name}"), self.table_weight(f"memcom_w_{name}").view(-1),
                bias, num_rows=m, seed=self.cfg.seed, hashed=not identity,
            )
        return out

    def _hashed(self, kjt: KeyedJaggedTensor, at: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(ids, hashed rows), each (nnz,) int64, of every value of ``kjt`` (features ``at`` of
        ``big``): one hash for all its features."""
        from compactrec.kernels import hash_remap

        ids = kjt.values().to(torch.int64)
        moduli = self._rows_t[at[value_keys(kjt)]]  # (nnz,): m of each value's feature
        hashed = ids % moduli if self.cfg.hash == "identity" else hash_remap(ids, moduli, seed=self.cfg.seed)
        return ids, hashed

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: the fused op. Sharded (DMP): TorchRec looks up the hashed rows and the
        scales; one-hot features compose after pooling, multi-hot ones before (``scale_pool``)."""
        if self.fused and self._fusable and is_local(self.ebc, self.shared, self.scales):
            return self._embed_fused(features)
        return embed_pooled_and_multi(self, features)

    def _embed_pooled(self, small: Optional[KeyedJaggedTensor], onehot: Optional[KeyedJaggedTensor]) -> Dict[
        str, torch.Tensor
    ]:
        """Small features and one-hot compressed ones: ONE pooled lookup of E, w (and b), then
        w[i] * E[h(i)] (+ b[i]) per bag (exact for bags of <= 1 id) -> {feature: (B, d)}."""
        parts = [small] if small is not None else []
        kinds = ["E", "w"] + (["b"] if self.cfg.bias else [])
        if onehot is not None:
            check_one_hot(onehot)
            ids, hashed = self._hashed(onehot, self._onehot_at)
            scale_ids = torch.div(ids, self.cfg.pack, rounding_mode="floor")
            reps = len(kinds)
            lengths, per_key = onehot.lengths(), onehot.length_per_key()
            parts.append(KeyedJaggedTensor(
                keys=[f"{n}__{k}" for k in kinds for n in self.onehot],
                values=torch.cat([hashed] + [scale_ids] * (reps - 1)),
                lengths=lengths.repeat(reps), length_per_key=per_key * reps,
            ))
        kjt = parts[0] if len(parts) == 1 else KeyedJaggedTensor(
            keys=parts[0].keys() + parts[1].keys(),
            values=torch.cat([parts[0].values().to(torch.int64), parts[1].values()]),
            lengths=torch.cat([p.lengths().to(torch.int32) for p in parts]),
            length_per_key=parts[0].length_per_key() + parts[1].length_per_key(),
        )
        groups = [[n] for n in self.small] + ([[f"{n}__{k}" for n in self.onehot] for k in kinds] if onehot is not None else [])
        cols = group_columns(self.ebc(kjt), groups)
        out = dict(zip(self.small, cols))
        if onehot is not None:
            b, f1, pack = cols[0].shape[0], len(self.onehot), self.cfg.pack
            # slot i % pack of each bag's scale row (0 for an empty bag, whose row pooled to 0)
            slot = per_bag(ids % pack, onehot.lengths()).view(f1, b).t().unsqueeze(2)  # (B, F_1, 1)
            e = cols[len(self.small)].view(b, f1, self.dim)
            w = cols[len(self.small) + 1].view(b, f1, pack).gather(2, slot)  # (B, F_1, 1)
            y = e * w
            if self.cfg.bias:
                y = y + cols[len(self.small) + 2].view(b, f1, pack).gather(2, slot)
            out.update(zip(self.onehot, y.view(b, f1 * self.dim).split(self.dim, dim=1)))
        return out

    def _embed_multi(self, multi: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Multi-hot compressed features: one unpooled lookup per collection, then one compose
        + pool over their F_m * B bags (key-major, as the KJT): compose before pool."""
        from compactrec.kernels import scale_pool

        ids, hashed = self._hashed(multi, self._multi_at)
        lengths, per_key = multi.lengths(), multi.length_per_key()
        rows = self.shared(KeyedJaggedTensor(
            keys=[f"{n}__E" for n in self.multi], values=hashed, lengths=lengths, length_per_key=per_key,
        ))
        pack = self.cfg.pack
        scale_ids = torch.div(ids, pack, rounding_mode="floor")
        scale_keys = [f"{n}__w" for n in self.multi] + ([f"{n}__b" for n in self.multi] if self.cfg.bias else [])
        reps = 2 if self.cfg.bias else 1
        looked = self.scales(KeyedJaggedTensor(
            keys=scale_keys, values=scale_ids.repeat(reps), lengths=lengths.repeat(reps), length_per_key=per_key * reps,
        ))
        col = (ids % pack).unsqueeze(1)  # w[i] is element i % pack of scale row i // pack
        e = join_rows([rows[f"{n}__E"].values() for n in self.multi])  # (nnz, d)
        w = join_rows([looked[f"{n}__w"].values() for n in self.multi]).gather(1, col).squeeze(1)  # (nnz,)
        b = join_rows([looked[f"{n}__b"].values() for n in self.multi]).gather(1, col).squeeze(1) if self.cfg.bias else None
        # (F_m * B, d): sum_j w_j E[h(i_j)] (+ b_j) per bag; w separates ids sharing a row
        pooled = scale_pool(e, multi.offsets(), w, b)
        return dict(zip(self.multi, pooled.split(multi.stride())))


def _table(name: str, feature: str, rows: int, dim: int, lo: float, hi: float) -> EmbeddingConfig:
    return EmbeddingConfig(
        name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[feature],
        weight_init_min=lo, weight_init_max=hi,
    )


def _bag(name: str, feature: str, rows: int, dim: int, lo: float, hi: float) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[feature], pooling=PoolingType.SUM,
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
