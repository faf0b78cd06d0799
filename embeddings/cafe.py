"""CAFE (Zhang et al., SIGMOD 2024): hot ids own a row, the rest share hash rows.

A ``HotSketch`` over global ids (local id + the feature's offset) decides online which ids
are hot. Composition over ONE stock ``EmbeddingBagCollection`` (sum pooling), so FBGEMM does
the lookups and DMP can shard it:

- ``t_{f}``              full table of each small feature (``small_field_rows``), feature ``f``;
- ``cafe_hot``           (H, d), shared by every compressed feature, features ``{f}__hot``;
- ``cafe_hash_{f}_{l}``  (rows_{f,l}, d) per compressed feature and level, feature ``{f}__h{l}``.

Per occurrence of compressed feature f: hot (slot s) -> ``cafe_hot[s]``; otherwise
``sum_l cafe_hash_{f}_{l}[hash_mod(id, rows_{f,l}, seed + 1 + l)]`` (levels > 1 is the
multi-level variant). Output of f = hot pooled + sum over levels of hash pooled.

Importance is recorded in training forwards and inserted into the sketch at the start of the
NEXT training forward (or ``flush()``), so the sketch and the hot rows never change inside
backward, while fused optimizers update rows. ``grad_norm``: each occurrence scores the L2
norm of its bag's pooled-output gradient (with sum pooling, the gradient of the row it used),
normalised to mean 1 over the batch's compressed occurrences; ``count``: 1 per occurrence.
The sketch is all buffers and ``state_dict()`` flushes pending importance first, so a
checkpoint restores the exact id -> row answers.

Single-device math. Under DMP with several ranks each rank would insert only its own batch,
so the sketches diverge: a sharded variant must all-gather (keys, scores) before ``insert``
and override ``_read_rows`` / ``_write_rows`` for rows held by other ranks.

Example::

    emb = build_cafe(schema, 16, CafeConfig(), small_field_rows=200, budget=full // 64)
    emb.plan                            # CafePlan(hot_rows, buckets, hash_rows), from plan_cafe
    kt = emb(kjt)                       # KeyedTensor, values (B, F * 16)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from compactrec.embeddings.accounting import FP32, full_embedding_bytes
from compactrec.embeddings.base import (
    CompressedEmbedding,
    bag_ids,
    full_config,
    group_columns,
    split_features,
    split_kjt,
    table_device,
    value_keys,
)
from compactrec.embeddings.budget import BudgetError, full_table_bytes, proportional_rows
from compactrec.embeddings.hotsketch import SCALAR_BYTES, HotSketch
from compactrec.embeddings.reserved import zero_reserved_rows
from compactrec.embeddings.seen import SeenIds, reserve_on, seen_bytes
from compactrec.hashing import hash_mod
from compactrec.kernels import hash_remap, project_sum
from compactrec.trainer.config import CafeConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

HOT_TABLE = "cafe_hot"


def hash_table(feature: str, level: int) -> str:
    return f"cafe_hash_{feature}_{level}"


@dataclass(frozen=True)
class CafePlan:
    """Sizes of a CAFE module: hot rows, sketch buckets, hash rows per compressed feature and level."""

    hot_rows: int
    buckets: int
    hash_rows: Dict[str, Tuple[int, ...]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- plan


def _check(cfg: CafeConfig) -> None:
    if not 0.0 <= cfg.hash_rate <= 1.0 or cfg.levels < 1 or cfg.slots < 1 or not 0.0 < cfg.decay <= 1.0:
        raise ValueError(
            f"embedding.cafe: need 0 <= hash_rate <= 1, levels >= 1, slots >= 1, 0 < decay <= 1 "
            f"(got hash_rate={cfg.hash_rate}, levels={cfg.levels}, slots={cfg.slots}, decay={cfg.decay})"
        )
    if cfg.hot_rows is not None and cfg.hot_rows < 1:
        raise ValueError(f"embedding.cafe.hot_rows must be >= 1, got {cfg.hot_rows}")
    if cfg.update_every < 1:
        raise ValueError(f"embedding.cafe.update_every must be >= 1, got {cfg.update_every}")


def _split_levels(rows: int, levels: int) -> Tuple[int, ...]:
    return tuple(rows // levels + (1 if l < rows % levels else 0) for l in range(levels))


def plan_cafe(
    schema: FeatureSchema, dim: int, budget_bytes: Optional[int], cfg: CafeConfig, small_field_rows: int
) -> CafePlan:
    """Budget -> sizes. Small features stay full; of the rest, ``hash_rate`` goes to the hash
    tables (rows per feature proportional to cardinality, split evenly across levels) and the
    remainder to hot rows, each costing its table row plus its share of the sketch (one
    bucket per hot row) and of the free-stack / owner buffers.
    ``cfg.hot_rows`` set: H is fixed and the hash tables get what is left of the budget
    (without a budget: ``hash_rate / (1 - hash_rate)`` times the hot part).

    Raises:
        BudgetError: the budget is below the smallest CAFE module (message: the largest ratio).
    """
    _check(cfg)
    small, big = split_features(schema, small_field_rows)
    row, small_bytes = FP32 * dim, full_table_bytes(small, dim)
    full = full_embedding_bytes(schema, dim)
    if not big:
        if budget_bytes is not None and small_bytes > budget_bytes:
            raise BudgetError(
                f"CAFE: every feature is small; the full tables need {small_bytes} bytes > budget {budget_bytes}"
            )
        return CafePlan(hot_rows=0, buckets=0)
    per_hot = row + HotSketch.state_bytes(1, 1, cfg.slots) - SCALAR_BYTES
    fixed = small_bytes + SCALAR_BYTES + _reserve_bytes(big, dim, cfg)
    min_hash = cfg.levels * len(big)
    floor_bytes = fixed + min_hash * row + per_hot * (cfg.hot_rows or 1)
    if budget_bytes is not None and budget_bytes < floor_bytes:
        raise BudgetError(
            f"CAFE cannot fit in {budget_bytes} bytes: it needs at least {floor_bytes} (small features kept "
            f"full: {small_bytes}, {min_hash} hash rows, {cfg.hot_rows or 1} hot row(s) with sketch); "
            f"the largest reachable compression ratio is {full / floor_bytes:.2f}x"
        )
    if cfg.hot_rows is not None:
        hot = cfg.hot_rows
        if budget_bytes is None:
            share = cfg.hash_rate / (1.0 - cfg.hash_rate) if cfg.hash_rate < 1 else 1.0
            hash_total = max(min_hash, int(hot * per_hot * share // row))
        else:
            hash_total = (budget_bytes - fixed - hot * per_hot) // row
    else:
        if budget_bytes is None:
            raise BudgetError("CAFE: set compression.ratio / compression.bytes or embedding.cafe.hot_rows")
        rest = budget_bytes - fixed
        hash_total = min(max(min_hash, int(cfg.hash_rate * rest // row)), (rest - per_hot) // row)
    caps = {f.name: f.cardinality * cfg.levels for f in big}  # more rows than ids per level is waste
    rows = proportional_rows(big, hash_total, minimum=cfg.levels, maximum=caps)
    if cfg.hot_rows is None:
        hot = min((rest - sum(rows.values()) * row) // per_hot, sum(f.cardinality for f in big))
    hash_rows = {n: _split_levels(r, cfg.levels) for n, r in rows.items()}
    return CafePlan(hot_rows=int(hot), buckets=int(hot), hash_rows=hash_rows)


def _reserve_bytes(big: List[SparseFeature], dim: int, cfg: CafeConfig) -> int:
    """``reserve_unseen``: the id bits and one reserved row per hash table."""
    if not reserve_on(cfg.reserve_unseen) or not big:
        return 0
    return seen_bytes([f.cardinality for f in big]) + cfg.levels * len(big) * FP32 * dim


def cafe_bytes(
    plan: CafePlan, schema: FeatureSchema, dim: int, cfg: CafeConfig, small_field_rows: int
) -> int:
    """Bytes of every parameter and buffer of ``build_cafe(..., plan=plan)`` (tested equal)."""
    small, big = split_features(schema, small_field_rows)
    total = full_table_bytes(small, dim) + sum(map(sum, plan.hash_rows.values())) * FP32 * dim
    if big:
        total += plan.hot_rows * FP32 * dim + HotSketch.state_bytes(plan.buckets, plan.hot_rows, cfg.slots)
    return total + _reserve_bytes(big, dim, cfg)


# ---------------------------------------------------------------------------------- importance


@dataclass
class _Occurrences:
    """One training forward's compressed occurrences, waiting for their importance."""

    gids: List[torch.Tensor]  # per compressed feature: (nnz_f,) global ids
    lengths: List[torch.Tensor]  # per compressed feature: (B,) bag lengths
    norms: List[Optional[torch.Tensor]]  # per compressed feature: (B,) pooled-grad norms (hooks)

    def scores(self, importance: str, mean=None) -> Tuple[torch.Tensor, torch.Tensor]:
        """(keys, scores) to insert. grad_norm: only features whose gradient arrived,
        normalised by ``mean(scores)`` (default: this batch's mean; sharded: all ranks')."""
        if importance == "count":
            keys = torch.cat(self.gids)
            return keys, torch.ones(keys.shape, dtype=torch.float32, device=keys.device)
        have = [i for i, n in enumerate(self.norms) if n is not None]
        if not have:
            keys = self.gids[0].new_empty(0)  # no backward ran
            scores = keys.new_empty(0, dtype=torch.float32)
        else:
            keys = torch.cat([self.gids[i] for i in have])
            # sum pooling: the row an occurrence used receives exactly its bag's pooled gradient
            scores = torch.cat([self.norms[i][bag_ids(self.lengths[i])] for i in have])  # type: ignore[index]
        if mean is not None:
            m = mean(scores)
        else:
            m = scores.mean() if scores.numel() else scores.new_zeros(())
        return (keys, scores / m) if m > 0 else (keys[:0], scores[:0])


def _flush_before_save(module: "CafeEmbedding", prefix: str, keep_vars: bool) -> None:
    module.flush()  # pending importance belongs in the checkpointed sketch


# ------------------------------------------------------------------------------------- module


class CafeEmbedding(CompressedEmbedding):
    """CAFE over ``schema``'s sparse features. Input: KJT with the schema's keys (ids in
    [0, N_f)). Output: KeyedTensor with the schema's keys, values (B, F * dim)."""

    def __init__(
        self,
        schema: FeatureSchema,
        dim: int,
        cfg: CafeConfig,
        plan: CafePlan,
        small_field_rows: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        _check(cfg)
        small, big = split_features(schema, small_field_rows)
        self.cfg, self.plan = cfg, plan
        self.small_names = [f.name for f in small]
        self.compressed: List[SparseFeature] = big
        starts = [0]
        for f in big:
            starts.append(starts[-1] + f.cardinality)
        self._starts = starts[:-1]  # fixed at build: the sketch's global id space
        # constants of the vectorised routing; buffers so they follow the module's device
        self.register_buffer("_starts_t", torch.tensor(self._starts, dtype=torch.int64, device=device), persistent=False)
        rows = [[plan.hash_rows[f.name][l] for f in big] for l in range(cfg.levels)] if big else [[]]
        self.register_buffer("_hash_rows_t", torch.tensor(rows, dtype=torch.int64, device=device), persistent=False)
        self.offsets: Dict[str, int] = {f.name: s for f, s in zip(big, self._starts)}
        self.ebc = EmbeddingBagCollection(tables=self._tables(small, big), device=table_device(device))
        self._kjt_keys = [n for c in self.ebc.embedding_bag_configs() for n in c.feature_names]
        # reserve_unseen: a non-hot id no training forward looked up reads row rows_{f,l} of
        # each hash table (one past the hashed rows; no training id reads it).
        self.seen = SeenIds([f.cardinality for f in big], device) if reserve_on(cfg.reserve_unseen) and big else None
        self.sketch: Optional[HotSketch] = None
        if big:
            self.sketch = HotSketch(
                plan.buckets, plan.hot_rows, cfg.threshold, cfg.slots, cfg.decay, cfg.seed, device=table_device(device)
            )
        self._pending: List[_Occurrences] = []
        self.router = None  # set by sharding.cafe.attach_sharded_cafe under DMP (several ranks)
        self.register_state_dict_pre_hook(_flush_before_save)
        zero_reserved_rows(self)

    def reserved_rows(self) -> Dict[str, int]:
        """Row rows_{f,l} of every hash table: the sum over levels of a new id's rows is 0."""
        if self.seen is None:
            return {}
        return {hash_table(f.name, l): rows for f in self.compressed for l, rows in enumerate(self.plan.hash_rows[f.name])}

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # Pending importance was recorded against the state being replaced. (Not a load
        # post-hook: DMP calls this method directly and never runs post-hooks.)
        self._pending.clear()
        super()._load_from_state_dict(*args, **kwargs)

    def _tables(self, small: List[SparseFeature], big: List[SparseFeature]) -> List[EmbeddingBagConfig]:
        tables = [full_config(f, self.dim) for f in small]
        if big:
            tables.append(
                EmbeddingBagConfig(
                    name=HOT_TABLE,
                    embedding_dim=self.dim,
                    num_embeddings=self.plan.hot_rows,
                    feature_names=[f"{f.name}__hot" for f in big],
                    pooling=PoolingType.SUM,
                )
            )
        for f in big:
            # start like the feature's full table (U(+-sqrt(1/N_f))), variance split over levels
            bound = math.sqrt(1.0 / (f.cardinality * self.cfg.levels))
            for l, rows in enumerate(self.plan.hash_rows[f.name]):
                tables.append(
                    EmbeddingBagConfig(
                        name=hash_table(f.name, l),
                        embedding_dim=self.dim,
                        num_embeddings=rows + int(reserve_on(self.cfg.reserve_unseen)),  # last: the reserved row
                        feature_names=[f"{f.name}__h{l}"],
                        pooling=PoolingType.SUM,
                        weight_init_min=-bound,
                        weight_init_max=bound,
                    )
                )
        return tables

    def global_ids(self, feature: str, ids: torch.Tensor) -> torch.Tensor:
        """Local ids of a compressed feature -> the sketch's keys."""
        return ids.to(torch.int64) + self.offsets[feature]

    def hash_rows(self, feature: str, ids: torch.Tensor, level: int) -> torch.Tensor:
        """Local ids -> rows of ``cafe_hash_{feature}_{level}``."""
        return hash_mod(ids, self.plan.hash_rows[feature][level], seed=self.cfg.seed + 1 + level)

    def key_hash_rows(self, keys: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Sketch keys (global ids, (n,) int64) -> (each key's compressed-feature index (n,),
        per level its row in that feature's ``cafe_hash_{f}_{l}`` (n,)): ``hash_rows`` of every
        feature at once, one ``hash_remap`` per level (the per-feature loop hashed 8 times
        per level at every sketch update)."""
        fidx = torch.searchsorted(self._starts_t, keys, right=True) - 1
        local = keys - self._starts_t[fidx]
        return fidx, [self._level_rows(local, self._hash_rows_t[l][fidx], l) for l in range(self.cfg.levels)]

    def _level_rows(self, local: torch.Tensor, rows: torch.Tensor, level: int) -> torch.Tensor:
        """Local ids (n,) -> their rows in level ``level``'s hash tables, ``rows`` (n,) the size
        of each value's table: one ``hash_remap`` with per-value moduli (= ``hash_rows`` per feature)."""
        return hash_remap(local, rows, seed=self.cfg.seed + 1 + level)

    # -------------------------------------------------------------------------- forward

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """features: KJT with the schema's keys -> {feature: (B, dim)}.

        All compressed features go through together (no per-feature loop): one sketch query,
        one routing sort, one EBC input built without splitting, one hot/cold merge over
        (B, F_c * dim), one gradient hook, instead of a dozen small ops per feature."""
        recording = self.training and torch.is_grad_enabled()
        if recording:
            self.flush(force=False)  # the last update_every steps' importance: the sketch only changes between steps
        names = [f.name for f in self.compressed]
        small, big = split_kjt(features, self.small_names, names)
        if big is None:  # every feature is small: plain full tables
            pooled = self.ebc(small).to_dict()
            return {n: pooled[n] for n in self.small_names}
        fidx = value_keys(big)  # (nnz_c,) compressed feature of each value
        gids = big.values().to(torch.int64) + self._starts_t[fidx]  # (nnz_c,) the sketch's keys
        values, lengths, per_key = self._route(gids, big.lengths(), fidx)
        if small is not None:
            values = torch.cat([small.values().to(torch.int64), values])
            lengths = torch.cat([small.lengths().to(lengths.dtype), lengths])
            per_key = small.length_per_key() + per_key
        kt = self.ebc(KeyedJaggedTensor(keys=self._kjt_keys, values=values, lengths=lengths, length_per_key=per_key))
        nf, levels, b = len(names), self.cfg.levels, big.stride()
        small_cols, hot, hashed = group_columns(kt, [self.small_names, [f"{n}__hot" for n in names],
                                                      [f"{n}__h{l}" for n in names for l in range(levels)]])
        # hash columns are feature-major, level-minor: level l of every feature, side by side
        per_level = [hashed] if levels == 1 else [
            hashed.reshape(b, nf, levels, self.dim)[:, :, l].reshape(b, nf * self.dim) for l in range(levels)
        ]
        merged = project_sum([hot] + per_level, [None] * (1 + levels))  # (B, F_c * dim): hot/cold merge in one op
        out = dict(zip(names, merged.split(self.dim, dim=1)))
        out.update(zip(self.small_names, small_cols.split(self.dim, dim=1)))
        if recording:
            self._record(gids, big.lengths(), merged, nf, b)
        return out

    def _route(
        self, gids: torch.Tensor, lengths: torch.Tensor, fidx: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
        """Every compressed value to its EBC keys, in ``_kjt_keys`` order (after the small
        features): ``f__hot`` (hot slot) for each f, then ``f__h{l}`` (hash row) for each f
        and level. gids (nnz,) global ids in key order, lengths (F_c * B,), fidx (nnz,) the
        feature of each value -> (values, lengths (F_c * (1 + L) * B,), values per key)."""
        query = self.sketch.query if self.router is None else self.router.query  # type: ignore[union-attr]
        slots = query(gids)  # one query (one exchange when sharded) for every feature
        nf, levels = len(self.compressed), self.cfg.levels
        b = lengths.numel() // nf
        keys = nf * (1 + levels)  # hot keys, then hash keys (feature-major, level-minor)
        local = gids - self._starts_t[fidx]
        cold = slots < 0
        bag = bag_ids(lengths) - fidx * b  # the value's bag within its feature
        first_hash = nf + fidx * levels  # key of (f, level 0)
        known = None if self.seen is None else self.seen.looked_up(gids)  # SeenIds' global ids = these gids
        targets, vals = [], []
        for l in range(levels):
            rows_l = self._hash_rows_t[l][fidx]  # (nnz,) this level's hashed rows per value
            rows = self._level_rows(local, rows_l, l)
            if known is not None:  # never-trained ids read the reserved row rows_l
                rows = torch.where(known, rows, rows_l)
            if l == 0:  # a hot value is looked up once, in the hot table
                targets.append(torch.where(cold, first_hash, fidx))
                vals.append(torch.where(cold, rows, slots))
            else:  # extra levels: cold values only; hot ones go to a dropped key past the end
                targets.append(torch.where(cold, first_hash + l, torch.full_like(fidx, keys)))
                vals.append(rows)
        target = targets[0] if levels == 1 else torch.cat(targets)
        value = vals[0] if levels == 1 else torch.cat(vals)
        bags = bag if levels == 1 else bag.repeat(levels)
        order = torch.sort(target, stable=True).indices  # stable: bag order inside every key
        per_key = torch.bincount(target, minlength=keys + 1).tolist()
        lens = torch.bincount(target * b + bags, minlength=(keys + 1) * b)[: keys * b]
        return value[order][: sum(per_key[:keys])], lens.to(torch.int32), per_key[:keys]

    def _record(self, gids: torch.Tensor, lengths: torch.Tensor, merged: torch.Tensor, nf: int, b: int) -> None:
        """gids (nnz_c,), lengths (F_c * B,), merged (B, F_c * dim): the compressed outputs."""
        occ = _Occurrences([gids.detach()], [lengths.detach()], [None])
        if self.cfg.importance == "grad_norm" and merged.requires_grad:
            merged.register_hook(_NormHook(occ, 0, nf))
        self._pending.append(occ)

    # -------------------------------------------------------------------- sketch update

    def flush(self, force: bool = True) -> int:
        """Insert the pending importance into the sketch and migrate promoted ids' rows.

        A training forward calls ``flush(force=False)`` first, which updates the sketch once
        ``cfg.update_every`` steps' importance is pending: the batches' (key, score) pairs
        are inserted as ONE batch (scores summed per key, each batch normalised on its own),
        so the sketch's fixed cost per update (its rounds, and under DMP its exchanges and
        the migration lookup) is paid once per ``update_every`` steps. ``state_dict`` and
        callers flush with ``force=True``: whatever is pending goes in. Every rank holds the
        same number of pending batches (one per training forward), so under DMP all ranks
        update at the same steps. Returns the number of promotions.
        """
        if not self._pending or (not force and len(self._pending) < self.cfg.update_every):
            return 0
        pending, self._pending = self._pending, []
        mean = None if self.router is None else self.router.mean
        parts = [occ.scores(self.cfg.importance, mean) for occ in pending]
        keys = torch.cat([k for k, _ in parts]) if len(parts) > 1 else parts[0][0]
        scores = torch.cat([v for _, v in parts]) if len(parts) > 1 else parts[0][1]
        if self.router is not None:  # collective: every rank updates at the same steps
            return self.router.update(keys, scores)
        if not keys.numel():
            return 0
        pk, ps, _, _ = self.sketch.insert(keys, scores)  # type: ignore[union-attr]
        # demotion: the hot row is simply released; the id falls back to its hash rows
        self._promote(pk, ps)
        return pk.numel()

    def _promote(self, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Copy each promoted id's current non-hot embedding (sum over levels of its hash
        rows) into its hot row. Optimizer state is NOT migrated: the hot row keeps the state
        its previous occupants left (for rowwise Adagrad, their summed squared gradients),
        and the hash rows keep theirs."""
        if keys.numel() == 0:
            return
        feature, level_rows = self.key_hash_rows(keys)
        values = torch.empty((keys.numel(), self.dim), dtype=torch.float32, device=keys.device)
        for i, f in enumerate(self.compressed):
            mask = feature == i
            if bool(mask.any()):
                rows = [self._read_rows(hash_table(f.name, l), r[mask]) for l, r in enumerate(level_rows)]
                values[mask] = sum(rows[1:], rows[0]).to(values.dtype)
        self._write_rows(HOT_TABLE, slots, values)

    # A sharded variant overrides these two (rows live on other ranks / in FBGEMM buffers).
    def _read_rows(self, table: str, rows: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.ebc.embedding_bags[table].weight[rows].clone()  # (n, dim)

    def _write_rows(self, table: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        with torch.no_grad():
            weight = self.ebc.embedding_bags[table].weight
            weight[rows] = values.to(weight.dtype)


class _NormHook:
    """Gradient hook on the compressed features' pooled outputs (B, parts * dim): stores the
    L2 norm of every (feature, bag) gradient, key-major as the KJT's bags: (parts * B,)."""

    def __init__(self, occ: _Occurrences, index: int, parts: int = 1) -> None:
        self.occ, self.index, self.parts = occ, index, parts

    def __call__(self, grad: torch.Tensor) -> None:
        g = grad.detach()
        self.occ.norms[self.index] = g.view(g.shape[0], self.parts, -1).norm(dim=2).t().reshape(-1)


def build_cafe(
    schema: FeatureSchema,
    dim: int,
    cfg: CafeConfig,
    small_field_rows: int,
    budget: Optional[int],
    device: Optional[torch.device] = None,
    plan: Optional[CafePlan] = None,
) -> CafeEmbedding:
    """The CAFE module for a byte budget (or ``cfg.hot_rows``), or for an explicit ``plan``."""
    if plan is None:
        plan = plan_cafe(schema, dim, budget, cfg, small_field_rows)
    return CafeEmbedding(schema, dim, cfg, plan, small_field_rows, device)
