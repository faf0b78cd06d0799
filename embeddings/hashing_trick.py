"""The hashing trick: e(i) = E_f[h(i) mod m_f], one smaller table per feature.

h is splitmix64 (``compactrec.hashing``), a real 64-bit mixer: Criteo ids after remapping
are dense, so the bare ``id % m`` of the dlrm reference (``--max-ind-range``) would put
neighbouring ids in neighbouring rows and the most frequent remapped ids together.
Composition: a remap of the KJT's values in front of one stock ``EmbeddingBagCollection``.

Example::

    emb = build_hash(schema, dim=32, cfg=HashConfig(), plan=plan_hash(schema, 32, budget, 200))
    kt = emb(kjt)       # KeyedTensor, values (B, F * 32)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from compactrec.embeddings.accounting import FP32
from compactrec.embeddings.base import CompressedEmbedding, full_config, is_local, split_features, table_device
from compactrec.embeddings.budget import BudgetError, full_table_bytes, proportional_rows
from compactrec.embeddings.reserved import zero_reserved_rows
from compactrec.embeddings.seen import SeenIds, reserve_on, seen_bytes
from compactrec.trainer.config import HashConfig
from compactrec.data.reader.manifest import FeatureSchema


@dataclass
class HashPlan:
    rows: Dict[str, int]  # compressed feature -> rows of its hashed table


def remap_values(
    features: KeyedJaggedTensor, moduli: torch.Tensor, seed: int, identity: bool
) -> torch.Tensor:
    """Per-key hashing of a KJT's values: key k's ids -> h(id) mod moduli[k]; moduli[k] = 0
    leaves key k's ids unchanged. Returns the new values (nnz,) int64, through the kernels'
    ``hash_remap`` (one fused pass on GPU)."""
    from compactrec.kernels import hash_remap

    values = features.values()
    # the per-key counts are host ints (the KJT knows them): sent along, sized without a sync
    counts = torch.tensor(features.length_per_key(), device=moduli.device)
    per_value = torch.repeat_interleave(moduli, counts, output_size=values.numel())
    if identity:  # the test mode: bare id % m
        ids = values.to(torch.int64)
        return torch.where(per_value > 0, ids % per_value.clamp(min=1), ids)
    return hash_remap(values, per_value, seed=seed)


class HashEmbedding(CompressedEmbedding):
    def __init__(
        self, schema: FeatureSchema, dim: int, cfg: HashConfig, plan: HashPlan, small_field_rows: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        self.cfg = cfg
        small, _ = split_features(schema, small_field_rows)
        small_names = {f.name for f in small}
        tables: List[EmbeddingBagConfig] = []
        for f in schema.sparse:  # schema order: the EBC's output is already in key order
            if f.name in small_names:
                tables.append(full_config(f, dim))
            else:
                tables.append(
                    EmbeddingBagConfig(
                        name=f"hash_{f.name}",
                        embedding_dim=dim,
                        num_embeddings=plan.rows[f.name] + int(reserve_on(cfg.reserve_unseen)),  # last: the reserved row
                        feature_names=[f.name],
                        pooling=PoolingType.SUM,
                        # Rows are shared by ~N/m ids: start them at the full table's scale.
                        weight_init_max=(1.0 / f.cardinality) ** 0.5,
                        weight_init_min=-((1.0 / f.cardinality) ** 0.5),
                    )
                )
        self.ebc = EmbeddingBagCollection(tables=tables, device=table_device(device))
        moduli = [0 if f.name in small_names else plan.rows[f.name] for f in schema.sparse]
        self.register_buffer("moduli", torch.tensor(moduli, dtype=torch.int64, device=device), persistent=False)
        self.moduli_list = moduli  # the same on the host: the fused path reads it without a sync
        # reserve_unseen: every feature's ids get a bit (small ones too: it keeps the routing
        # free of masks); a hashed id whose bit is unset reads row m_f, which no training id reads.
        self.seen = SeenIds(schema.cardinalities, device) if reserve_on(cfg.reserve_unseen) else None
        if self.seen is not None:
            self.register_buffer("seen_starts", torch.tensor(self.seen.starts, dtype=torch.int64, device=device),
                                 persistent=False)
        zero_reserved_rows(self)

    def reserved_rows(self) -> Dict[str, int]:
        if self.seen is None:
            return {}
        return {f"hash_{f.name}": m for f, m in zip(self.schema.sparse, self.moduli_list) if m}

    def _rows(self, j: int, ids: torch.Tensor, m: int) -> torch.Tensor:
        """Feature j's ids (n,) int64 -> rows of its hashed table (m > 0)."""
        from compactrec.kernels import hash_remap

        rows = ids % m if self.cfg.hash == "identity" else hash_remap(ids, m, seed=self.cfg.seed)
        if self.seen is None:
            return rows
        return self.seen.route(self.seen.global_ids(j, ids), rows, rows.new_tensor(m))

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: the fused hash_scale_bag (no scale) per feature on the tables' weights."""
        from compactrec.kernels import hash_scale_bag

        out = {}
        identity = self.cfg.hash == "identity"
        for j, (f, m, jt) in enumerate(zip(self.schema.sparse, self.moduli_list, features.to_dict().values())):
            ids = jt.values().to(torch.int64)
            name = f"hash_{f.name}" if m else f"t_{f.name}"
            table = self.ebc.embedding_bags[name].weight
            if m and self.seen is not None:  # rows routed first: the op gathers them as given
                out[f.name] = hash_scale_bag(self._rows(j, ids, m), jt.offsets(), table, hashed=False)
                continue
            hashed = bool(m) and not identity
            out[f.name] = hash_scale_bag(ids % m if m and identity else ids, jt.offsets(), table,
                                         num_rows=m or None, seed=self.cfg.seed, hashed=hashed)
        return out

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        if self.fused and is_local(self.ebc) and features.keys() == self.feature_names:
            return super().forward(features)  # -> embed: the fused op
        values = remap_values(features, self.moduli, self.cfg.seed, self.cfg.hash == "identity")
        if self.seen is not None:
            values = self._route_unseen(features, values)
        remapped = KeyedJaggedTensor(keys=features.keys(), values=values, lengths=features.lengths())
        return self.ebc(remapped)


    def _route_unseen(self, features: KeyedJaggedTensor, values: torch.Tensor) -> torch.Tensor:
        """Hashed values (nnz,) of the whole KJT -> the same with every unseen id of a hashed
        feature sent to its reserved row m_f (small features' ids are marked, not changed)."""
        counts = torch.tensor(features.length_per_key(), device=values.device)
        n = values.numel()
        per_m = torch.repeat_interleave(self.moduli, counts, output_size=n)
        gids = features.values().to(torch.int64) + torch.repeat_interleave(self.seen_starts, counts, output_size=n)
        routed = self.seen.route(gids, values, per_m)  # type: ignore[union-attr]
        return torch.where(per_m > 0, routed, values)


def fixed_bytes(schema: FeatureSchema, dim: int, cfg: HashConfig, small_field_rows: int) -> int:
    """Bytes that do not depend on the hashed rows: the small features' full tables, and with
    ``reserve_unseen`` the id bits and one reserved row per hashed feature."""
    small, big = split_features(schema, small_field_rows)
    extra = seen_bytes(schema.cardinalities) + len(big) * dim * FP32 if reserve_on(cfg.reserve_unseen) else 0
    return full_table_bytes(small, dim) + extra


def hash_bytes(schema: FeatureSchema, dim: int, plan: HashPlan, small_field_rows: int,
               cfg: HashConfig = HashConfig()) -> int:
    return fixed_bytes(schema, dim, cfg, small_field_rows) + sum(plan.rows.values()) * dim * FP32


def plan_hash(schema: FeatureSchema, dim: int, budget: int, small_field_rows: int,
              cfg: HashConfig = HashConfig()) -> HashPlan:
    """Rows per compressed feature proportional to its cardinality, filling ``budget``."""
    _, big = split_features(schema, small_field_rows)
    left = budget - fixed_bytes(schema, dim, cfg, small_field_rows)
    if left < len(big) * dim * FP32:
        raise BudgetError(
            f"hash: budget {budget} B is below the {fixed_bytes(schema, dim, cfg, small_field_rows) + len(big) * dim * FP32} B "
            f"of the small features' full tables{', the id bits' if reserve_on(cfg.reserve_unseen) else ''} plus one row per "
            f"hashed feature"
        )
    return HashPlan(rows=proportional_rows(big, left // (dim * FP32)))


def build_hash(
    schema: FeatureSchema, dim: int, cfg: HashConfig, small_field_rows: int, budget: Optional[int],
    device: Optional[torch.device] = None,
) -> HashEmbedding:
    _, big = split_features(schema, small_field_rows)
    if cfg.rows is not None:
        plan = HashPlan(rows={f.name: min(cfg.rows, f.cardinality) for f in big})
    elif budget is not None:
        plan = plan_hash(schema, dim, budget, small_field_rows, cfg)
    else:
        raise BudgetError("hash: set compression.ratio / compression.bytes or embedding.hash.rows")
    return HashEmbedding(schema, dim, cfg, plan, small_field_rows, device)
