"""Mixed-dimension embeddings (Ginart et al., ISIT 2021; dlrm ``tricks/md_embedding_bag.py``).

A block k (a table, or a frequency-ranked group of rows of one table) gets its own width
d_k <= d and a projection P_k (d_k x d) to the common width (identity when d_k = d):
e(i) = E_k[i] P_k. Pooling commutes with the projection, so each block is pooled by a stock
``EmbeddingBagCollection`` (FBGEMM) and projected once per bag: a few small GEMMs instead
of one per id.

Width rule (the reference ``md_solver`` power rule): d_k = lambda * p_k^alpha, clipped to
[1, d], lambda chosen so the most popular block gets d; optional power-of-two rounding.
FBGEMM's tables need widths that are multiples of 4, so widths snap to {1, 2, 4, 8, ..., d};
1- and 2-wide blocks are stored 4 / d_k rows per row of a width-4 table so that the narrow
tail, where MDE saves most, stays possible: for one-hot features (bags of <= 1 id) that table
is pooled by the same EBC and each bag's d_k columns are picked from its pooled row (the
id's own row; 0 for an empty bag); for multi-hot features it is looked up unpooled, the
columns picked per id, then pooled.
- ``blocks: table``: one block per table with the reference's popularity proxy p_k = 1/n_k;
  tables at or below ``threshold`` rows keep the full width (the reference crashes there).
- ``blocks: rows`` (default): per feature, ``num_blocks`` blocks of ids ranked by their
  frequency in a sample of the training data, log-uniform in rank (for N = 40000 and 4
  blocks: the top 14 ids, the next 186, 2628, then 37172), p_k = mean count per row of the
  block. The id -> (block, row) map is part of the model state (persistent buffers, counted
  in the bytes). A full id -> rank map would cost 4 bytes per id (1/d of the full table),
  so only the ranked head is stored: the head's ids sorted (int64) with their ranks (int32),
  found by binary search; every other id is in the tail block, whose table is indexed by
  the raw id (N rows of the narrowest width; the head's rows in it go unused, which at
  width d_tail costs far less than a map).
``alpha`` is searched by bisection to meet the byte budget unless given.

Example::

    emb = build_mixed_dim(schema, 32, MixedDimConfig(), 200, budget, counts=lambda: count_ids(...))
    kt = emb(kjt)       # KeyedTensor, values (B, F * 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.embeddings.accounting import FP32
from compactrec.embeddings.base import (
    CompressedEmbedding,
    bag_ids,
    check_at_most_one,
    full_config,
    is_local,
    join_rows,
    split_features,
    split_kjt,
    sum_pool,
    table_device,
    value_keys,
)
from compactrec.embeddings.budget import BudgetError, bisect, full_table_bytes
from compactrec.trainer.config import MixedDimConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

CountsFn = Callable[[], Dict[str, np.ndarray]]
ALPHA_MAX = 16.0
ZIPF_PRIOR = 1.1  # exponent of the id-frequency prior used when planning without data
PACK = 4  # width of the tables that hold narrow (1- or 2-wide) blocks


@dataclass
class MixedDimPlan:
    alpha: float
    block_rows: Dict[str, List[int]]  # compressed feature -> ids per block (table mode: [N])
    dims: Dict[str, List[int]]  # compressed feature -> width per block

    def table_rows(self, feature: str, cardinality: int, rows_mode: bool) -> List[int]:
        """Stored rows per block: in rows mode the tail block is indexed by raw id."""
        rows = list(self.block_rows[feature])
        if rows_mode:
            rows[-1] = cardinality
        return rows


def block_bounds(n: int, k: int) -> List[int]:
    """Log-uniform rank boundaries [0, n^(1/k), n^(2/k), ..., n], strictly increasing."""
    bounds = [0]
    for j in range(1, k + 1):
        b = min(n, max(bounds[-1] + 1, int(round(n ** (j / k)))))
        if b > bounds[-1]:
            bounds.append(b)
    bounds[-1] = n
    return bounds


def zipf_block_popularity(bounds: List[int], s: float) -> np.ndarray:
    """Mean of rank^-s over each block [a, b) of 1-based ranks (integral approximation)."""
    a, b = np.array(bounds[:-1], np.float64) + 1, np.array(bounds[1:], np.float64) + 1
    return (b ** (1 - s) - a ** (1 - s)) / ((1 - s) * (b - a))


def frequency_rank(counts: np.ndarray) -> np.ndarray:
    """rank[id]: 0 for the most frequent id; ties broken by id (deterministic on every rank)."""
    order = np.lexsort((np.arange(counts.size), -counts))
    rank = np.empty(counts.size, dtype=np.int32)
    rank[order] = np.arange(counts.size, dtype=np.int32)
    return rank


def allowed_widths(dim: int) -> np.ndarray:
    """Widths FBGEMM can hold: multiples of 4 (its TBE asserts it), plus 1 and 2, which are
    stored packed 4/d_k ids per row of a width-4 table, plus ``dim`` itself."""
    return np.unique(np.array([1, 2, *range(4, dim + 1, 4), dim]))


def power_rule(popularity: np.ndarray, alpha: float, dim: int, round_dims: bool) -> np.ndarray:
    """d_k = dim * (p_k / max p)^alpha, clipped to [1, dim], then snapped to the nearest
    allowed width (optionally rounded to a power of two first, as the reference can)."""
    p = popularity / max(float(popularity.max()), 1e-30)
    with np.errstate(divide="ignore"):
        d = dim * np.power(p, alpha)
    d = np.clip(np.nan_to_num(d, nan=1.0), 1.0, dim)
    if round_dims:
        d = np.clip(2.0 ** np.round(np.log2(d)), 1, dim)
    widths = allowed_widths(dim)
    return widths[np.abs(d[:, None] - widths[None, :]).argmin(axis=1)].astype(np.int64)


def packed_rows(rows: int, width: int) -> int:
    """Rows of the width-4 table that stores ``rows`` rows of width 1 or 2."""
    return -(-rows * width // PACK)


class _Blocks:
    """Per compressed feature: block boundaries and popularity (the inputs of the rule)."""

    def __init__(self, features: List[SparseFeature], cfg: MixedDimConfig, counts: Optional[Dict[str, np.ndarray]]):
        self.features = features
        self.bounds: Dict[str, List[int]] = {}
        self.pop: Dict[str, np.ndarray] = {}
        self.rank: Dict[str, np.ndarray] = {}
        for f in features:
            if cfg.blocks == "table":
                self.bounds[f.name] = [0, f.cardinality]
                self.pop[f.name] = np.array([1.0 / f.cardinality])
                continue
            bounds = block_bounds(f.cardinality, cfg.num_blocks)
            self.bounds[f.name] = bounds
            if counts is None:  # planning without data: a Zipf prior over ranks
                self.pop[f.name] = zipf_block_popularity(bounds, ZIPF_PRIOR)
                continue
            c = counts[f.name].astype(np.float64)
            self.rank[f.name] = frequency_rank(c)
            by_rank = np.sort(c)[::-1]
            self.pop[f.name] = np.array([by_rank[a:b].mean() for a, b in zip(bounds, bounds[1:])])

    def plan(self, alpha: float, dim: int, round_dims: bool) -> MixedDimPlan:
        names = [f.name for f in self.features]
        allp = np.concatenate([self.pop[n] for n in names]) if names else np.zeros(0)
        dims = power_rule(allp, alpha, dim, round_dims) if names else np.zeros(0, np.int64)
        out_dims, out_rows, at = {}, {}, 0
        for n in names:
            b = self.bounds[n]
            out_dims[n] = [int(x) for x in dims[at : at + len(b) - 1]]
            out_rows[n] = [hi - lo for lo, hi in zip(b, b[1:])]
            at += len(b) - 1
        return MixedDimPlan(alpha, out_rows, out_dims)


def _kept_full(schema: FeatureSchema, cfg: MixedDimConfig, small_field_rows: int):
    limit = max(small_field_rows, cfg.threshold if cfg.blocks == "table" else 0)
    return split_features(schema, limit)


def mixed_dim_bytes(schema: FeatureSchema, dim: int, cfg: MixedDimConfig, plan: MixedDimPlan, small_field_rows: int) -> int:
    small, big = _kept_full(schema, cfg, small_field_rows)
    total = full_table_bytes(small, dim)
    rows_mode = cfg.blocks == "rows"
    for f in big:
        for rows, d in zip(plan.table_rows(f.name, f.cardinality, rows_mode), plan.dims[f.name]):
            table = packed_rows(rows, d) * PACK if d < PACK else rows * d
            total += table * FP32 + (d * dim * FP32 if d < dim else 0)
        if rows_mode:
            total += sum(plan.block_rows[f.name][:-1]) * (8 + 4)  # head ids (int64) + ranks (int32)
    return total


class MixedDimEmbedding(CompressedEmbedding):
    def __init__(
        self, schema: FeatureSchema, dim: int, cfg: MixedDimConfig, plan: MixedDimPlan,
        small_field_rows: int, ranks: Optional[Dict[str, np.ndarray]] = None,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        self.rows_mode = cfg.blocks == "rows"
        small, big = _kept_full(schema, cfg, small_field_rows)
        self.small = [f.name for f in small]
        self.big = [f.name for f in big]
        tables: List[EmbeddingBagConfig] = [full_config(f, dim) for f in small]
        narrow: List[EmbeddingConfig] = []
        self.projections = nn.ParameterDict()
        self.block_keys: Dict[str, List[str]] = {}
        self.narrow_width: Dict[str, int] = {}  # key of a packed block -> its width (1 or 2)
        self.widths: Dict[str, int] = {}  # block key (f"{feature}__b{k}") -> d_k
        self.stored_rows: Dict[str, int] = {}  # block key -> rows its table holds
        self.stored_offsets: Dict[str, List[int]] = {}  # feature -> K+1 block starts in stored rows (host)
        for f in big:
            keys = []
            bound = math.sqrt(1.0 / f.cardinality)
            stored = plan.table_rows(f.name, f.cardinality, self.rows_mode)
            for k, (rows, d) in enumerate(zip(stored, plan.dims[f.name])):
                key = f"{f.name}__b{k}"
                keys.append(key)
                self.widths[key] = d
                self.stored_rows[key] = rows
                if d < PACK and not f.multi_hot:  # one-hot: pooled, the bag's slot picked after pooling
                    self.narrow_width[key] = d
                    tables.append(EmbeddingBagConfig(
                        name=f"mde_{f.name}_b{k}", embedding_dim=PACK, num_embeddings=packed_rows(rows, d),
                        feature_names=[key], pooling=PoolingType.SUM, weight_init_min=-bound, weight_init_max=bound,
                    ))
                elif d < PACK:
                    self.narrow_width[key] = d
                    narrow.append(EmbeddingConfig(
                        name=f"mde_{f.name}_b{k}", embedding_dim=PACK, num_embeddings=packed_rows(rows, d),
                        feature_names=[key], weight_init_min=-bound, weight_init_max=bound,
                    ))
                else:
                    tables.append(EmbeddingBagConfig(
                        name=f"mde_{f.name}_b{k}", embedding_dim=d, num_embeddings=rows, feature_names=[key],
                        pooling=PoolingType.SUM, weight_init_min=-bound, weight_init_max=bound,
                    ))
                if d < dim:  # E_k P_k keeps the full table's output scale: P ~ N(0, 1/d_k)
                    self.projections[key] = nn.Parameter(torch.randn(d, dim, device=device) / math.sqrt(d))
            self.block_keys[f.name] = keys
            self.stored_offsets[f.name] = np.cumsum([0] + stored).tolist()
            # the same starts on the device, indexed by each id's block in forward
            self.register_buffer(f"starts_{f.name}", torch.tensor(self.stored_offsets[f.name], dtype=torch.int64,
                                                                  device=device), persistent=False)
            bounds = np.cumsum([0] + plan.block_rows[f.name])
            self.register_buffer(f"bounds_{f.name}", torch.tensor(bounds, dtype=torch.int64, device=device),
                                 persistent=False)
            if self.rows_mode:
                head = int(bounds[-2])  # ids ranked before the tail block
                if ranks is None:  # planning on the meta device: sizes only
                    if device is None or torch.device(device).type != "meta":
                        raise ValueError("mixed_dim row blocks need id counts from the training data")
                    head_ids = torch.empty(head, dtype=torch.int64, device=device)
                    head_rank = torch.empty(head, dtype=torch.int32, device=device)
                else:
                    rank = torch.from_numpy(ranks[f.name]).to(torch.int64)
                    head_ids = torch.nonzero(rank < head).flatten()  # sorted ascending
                    head_rank = rank[head_ids].to(torch.int32)
                self.register_buffer(f"head_ids_{f.name}", head_ids.to(device) if device else head_ids)
                self.register_buffer(f"head_rank_{f.name}", head_rank.to(device) if device else head_rank)
        self.ebc = EmbeddingBagCollection(tables=tables, device=table_device(device))
        self.packed = EmbeddingCollection(tables=narrow, device=table_device(device)) if narrow else None
        self._routing_constants(big, plan, device)

    def _routing_constants(self, big: List[SparseFeature], plan: MixedDimPlan, device) -> None:
        """Host lists and small buffers (from the plan alone) that route every compressed id
        of a batch in one pass: block keys numbered wide (EBC) first, then the packed blocks
        of one-hot features of width 1, of width 2 (EBC, pooled), then those of multi-hot
        features of width 1, of width 2 (unpooled), so one sort splits a batch into the groups."""
        keys = [k for f in big for k in self.block_keys[f.name]]
        multi = {k for f in big if f.multi_hot for k in self.block_keys[f.name]}
        self._wide = [k for k in keys if k not in self.narrow_width]
        # packed blocks of one-hot features (pooled by the EBC) and of multi-hot ones (unpooled)
        self._pooled_groups = [[k for k in keys if self.narrow_width.get(k) == w and k not in multi] for w in (1, 2)]
        self._narrow_groups = [[k for k in keys if self.narrow_width.get(k) == w and k in multi] for w in (1, 2)]
        self._groups = [self._wide, *self._pooled_groups, *self._narrow_groups]
        target = {k: i for i, k in enumerate(k for g in self._groups for k in g)}
        nblocks = [len(self.block_keys[f.name]) for f in big]
        span = max([f.cardinality for f in big], default=0) + 1  # feature * span + rank: one sorted key space
        inner = [j * span + int(x) for j, f in enumerate(big) for x in np.cumsum([0] + plan.block_rows[f.name])[1:-1]]
        as_t = lambda xs: torch.tensor(xs, dtype=torch.int64, device=device)  # noqa: E731
        self._span = span
        self.register_buffer("_key_target", as_t([target[k] for k in keys]), persistent=False)
        self._key_start = np.cumsum([0] + nblocks)[:-1].tolist()
        self.register_buffer("_key_start_t", as_t(self._key_start), persistent=False)
        self.register_buffer("_inner_bounds", as_t(inner), persistent=False)  # (sum_f K_f - 1,)
        self.register_buffer("_inner_before", as_t(np.cumsum([0] + [k - 1 for k in nblocks])[:-1].tolist()),
                             persistent=False)
        self.register_buffer("_tail_block", as_t([k - 1 for k in nblocks]), persistent=False)
        self.register_buffer("_id_start", as_t(np.cumsum([0] + [f.cardinality for f in big])[:-1].tolist()),
                             persistent=False)
        bounds = [np.cumsum([0] + plan.block_rows[f.name]).tolist() for f in big]
        self.register_buffer("_bounds_flat", as_t([x for b in bounds for x in b]), persistent=False)
        self.register_buffer("_bounds_at", as_t(np.cumsum([0] + [len(b) for b in bounds])[:-1].tolist()),
                             persistent=False)

    def _locate(self, name: str, ids: torch.Tensor, bounds: torch.Tensor):
        """(block, row in block) per id: binary search in the head, else the tail by raw id."""
        head_ids = getattr(self, f"head_ids_{name}")
        tail = bounds.numel() - 2
        if head_ids.numel() == 0:
            return torch.full_like(ids, tail), ids
        pos = torch.searchsorted(head_ids, ids).clamp(max=head_ids.numel() - 1)
        found = head_ids[pos] == ids
        rank = getattr(self, f"head_rank_{name}")[pos].to(torch.int64)
        block = torch.where(found, torch.bucketize(rank, bounds[1:-1], right=True), torch.full_like(ids, tail))
        row = torch.where(found, rank - bounds[block], ids)
        return block, row

    def _block_tables(self, name: str) -> List[torch.Tensor]:
        """Each block's table as (stored rows, d_k); packed 1-/2-wide blocks as views."""
        out = []
        for k, key in enumerate(self.block_keys[name]):
            weight = self.table_weight(f"mde_{name}_b{k}")
            if key in self.narrow_width:
                w, rows = self.narrow_width[key], self.stored_rows[key]
                out.append(weight.view(-1)[: rows * w].view(rows, w))
            else:
                out.append(weight)
        return out

    def _embed_fused(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: one fused mixed_dim_bag per feature (pool per block, project, sum)."""
        from compactrec.kernels import hash_scale_bag, mixed_dim_bag

        jts = features.to_dict()
        out = {  # full-width tables of the small features: a plain bag on their weights
            n: hash_scale_bag(jts[n].values(), jts[n].offsets(), self.table_weight(f"t_{n}"), hashed=False)
            for n in self.small
        }
        for name in self.big:
            ids, jt = jts[name].values().to(torch.int64), jts[name]
            bounds = getattr(self, f"bounds_{name}")
            block, row = self._locate(name, ids, bounds) if self.rows_mode else (torch.zeros_like(ids), ids)
            starts = getattr(self, f"starts_{name}")
            projections = [self.projections[k] if k in self.projections else None for k in self.block_keys[name]]
            out[name] = mixed_dim_bag(starts[block] + row, jt.offsets(), self.stored_offsets[name],
                                      self._block_tables(name), projections)
        return out

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        if self.fused and is_local(self.ebc, self.packed):
            return self._embed_fused(features)
        from compactrec.kernels import project_sum

        small, big = split_kjt(features, self.small, self.big)
        if big is None:
            pooled = self.ebc(small).to_dict()
            return {n: pooled[n] for n in self.small}
        fidx = value_keys(big)  # (nnz_c,) compressed feature of each value
        ids, b = big.values().to(torch.int64), big.stride()
        block, row = self._locate_all(ids, fidx)
        target = self._key_target[self._key_start_t[fidx] + block]  # wide, pooled narrow, unpooled narrow keys
        bag = bag_ids(big.lengths()) - fidx * b  # the value's bag within its feature
        groups = self._groups
        nkeys = sum(len(g) for g in groups)
        order = torch.sort(target, stable=True).indices  # stable: bag order inside every key
        per_key = torch.bincount(target, minlength=nkeys).tolist()
        lens = torch.bincount(target * b + bag, minlength=nkeys * b).to(torch.int32)
        sizes = [len(g) for g in groups]
        starts = np.cumsum([0] + sizes[:-1]).tolist()
        per_group = [sum(per_key[a : a + n]) for a, n in zip(starts, sizes)]
        vals = row[order].split(per_group)
        lens_g = lens.split([n * b for n in sizes])
        per_key_g = [per_key[a : a + n] for a, n in zip(starts, sizes)]
        # the EBC: small features, wide blocks, one-hot packed blocks (row (v * w) // 4)
        values = torch.cat([vals[0]] + [(vals[g] * w) // PACK for g, w in ((1, 1), (2, 2))])
        lengths = torch.cat(lens_g[:3])
        lpk = per_key_g[0] + per_key_g[1] + per_key_g[2]
        if small is not None:
            values = torch.cat([small.values().to(torch.int64), values])
            lengths = torch.cat([small.lengths().to(torch.int32), lengths])
            lpk = small.length_per_key() + lpk
        pooled = self.ebc(KeyedJaggedTensor(keys=self.small + [k for g in groups[:3] for k in g], values=values,
                                            lengths=lengths, length_per_key=lpk)).to_dict()
        if sizes[1] or sizes[2]:
            check_at_most_one(torch.cat(lens_g[1:3]), "mixed_dim packed blocks")
            bags = (target[order] * b + bag[order]).split(per_group)  # each value's (key, bag) slot
            pooled.update(self._pick_slots(groups[1:3], vals[1:3], bags[1:3], [starts[1], starts[2]], pooled, b))
        pooled.update(self._narrow_all(groups[3:], vals[3:], lens_g[3:], per_key_g[3:], b))
        out = {n: pooled[n] for n in self.small}
        params = self.projections._parameters  # one module lookup, not one per block (nn.Module.__getattr__ is slow)
        for name in self.big:
            keys = self.block_keys[name]
            # sum_k (B, d_k) @ (d_k, d): pooled per block first, projected once per bag
            out[name] = project_sum([pooled[k] for k in keys], [params.get(k) for k in keys])
        return out

    def _locate_all(self, ids: torch.Tensor, fidx: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``_locate`` for every compressed feature at once: ids (nnz,) local, fidx (nnz,) their
        feature -> (block within the feature, row in the block), each (nnz,) int64. The heads'
        sorted ids, shifted by each feature's id offset, form one sorted array (one search)."""
        tail = self._tail_block[fidx]
        if not self.rows_mode:
            return torch.zeros_like(ids), ids
        buffers = self._buffers  # one lookup, not two per feature
        head = torch.cat([buffers[f"head_ids_{n}"] + self._id_start[j] for j, n in enumerate(self.big)])
        if head.numel() == 0:
            return tail, ids
        rank_of = torch.cat([buffers[f"head_rank_{n}"] for n in self.big])
        gid = ids + self._id_start[fidx]
        pos = torch.searchsorted(head, gid).clamp(max=head.numel() - 1)
        found = head[pos] == gid
        rank = rank_of[pos].to(torch.int64)
        within = torch.bucketize(fidx * self._span + rank, self._inner_bounds, right=True) - self._inner_before[fidx]
        block = torch.where(found, within, tail)
        row = torch.where(found, rank - self._bounds_flat[self._bounds_at[fidx] + block], ids)
        return block, row

    def _pick_slots(self, groups, vals, bags, starts, pooled, b: int) -> Dict[str, torch.Tensor]:
        """Packed blocks of one-hot features, pooled by the EBC into (B, 4) rows: each bag's
        row IS its id's row (bags of <= 1 id; 0 when empty), so its w columns from (row * w)
        % 4 on are the id's own, picked per bag -> {key: (B, w)}."""
        out: Dict[str, torch.Tensor] = {}
        for w, group, v, at, start in zip((1, 2), groups, vals, bags, starts):
            if not group:
                continue
            n = len(group)
            slot = v.new_zeros(n * b).index_copy_(0, at - start * b, (v * w) % PACK)  # (n * B,) key-major
            cols = slot.view(n, b).t().unsqueeze(2) + torch.arange(w, device=v.device)  # (B, n, w)
            rows = torch.stack([pooled[k] for k in group], dim=1).gather(2, cols)  # (B, n, w)
            out.update(zip(group, rows.unbind(1)))
        return out

    def _narrow_all(self, groups, vals, lens, per_key, b: int) -> Dict[str, torch.Tensor]:
        """Pooled outputs of the packed blocks, one group per width (1, 2): one unpooled lookup
        of their width-4 rows, the block's columns gathered per id, pooled: {key: (B, w)}."""
        keys = [k for g in groups for k in g]
        if self.packed is None or not keys:
            return {}
        looked = self.packed(KeyedJaggedTensor(
            keys=keys, values=torch.cat([(v * w) // PACK for w, v in zip((1, 2), vals)]),
            lengths=torch.cat(list(lens)), length_per_key=per_key[0] + per_key[1],
        ))
        out: Dict[str, torch.Tensor] = {}
        for w, group, v, ln in zip((1, 2), groups, vals, lens):
            if not group:
                continue
            cols = ((v * w) % PACK).unsqueeze(1) + torch.arange(w, device=v.device)  # (nnz_g, w)
            rows = join_rows([looked[k].values() for k in group]).gather(1, cols)
            out.update(zip(group, sum_pool(rows, ln).split(b)))  # (B, w) per key
        return out


def plan_mixed_dim(
    schema: FeatureSchema, dim: int, budget: int, cfg: MixedDimConfig, small_field_rows: int,
    blocks: _Blocks,
) -> MixedDimPlan:
    def bytes_at(alpha: float) -> int:
        return mixed_dim_bytes(schema, dim, cfg, blocks.plan(alpha, dim, cfg.round_dims), small_field_rows)

    if bytes_at(ALPHA_MAX) > budget:
        best = full_table_bytes(schema.sparse, dim) / bytes_at(ALPHA_MAX)
        raise BudgetError(
            f"mixed_dim ({cfg.blocks} blocks) cannot reach this ratio: at most {best:.1f}x with dim {dim}"
            + (" (row blocks keep a tail table of N rows of width >= 1)" if cfg.blocks == "rows" else "")
        )
    if bytes_at(0.0) <= budget:
        return blocks.plan(0.0, dim, cfg.round_dims)
    alpha = bisect(bytes_at, budget, 0.0, ALPHA_MAX, increasing=False)
    plan = blocks.plan(alpha, dim, cfg.round_dims)
    return plan if cfg.round_dims else _fill(plan, blocks, budget, lambda p: mixed_dim_bytes(schema, dim, cfg, p, small_field_rows), dim)


def _fill(plan: MixedDimPlan, blocks: _Blocks, budget: int, bytes_of, dim: int) -> MixedDimPlan:
    """Spend what the snapped widths left of the budget: widen blocks to their next allowed
    width, most popular first, while the total stays within the budget (the power rule's
    alpha moves all widths at once, in steps too coarse to land near the budget)."""
    widths = allowed_widths(dim)
    order = sorted(
        ((float(blocks.pop[n][k]), n, k) for n in plan.dims for k in range(len(plan.dims[n]))),
        key=lambda t: (-t[0], t[1], t[2]),
    )
    changed = True
    while changed:
        changed = False
        for _, n, k in order:
            wider = widths[widths > plan.dims[n][k]]
            if wider.size == 0:
                continue
            old = plan.dims[n][k]
            plan.dims[n][k] = int(wider[0])
            if bytes_of(plan) <= budget:
                changed = True
            else:
                plan.dims[n][k] = old
    return plan


def build_mixed_dim(
    schema: FeatureSchema, dim: int, cfg: MixedDimConfig, small_field_rows: int, budget: Optional[int],
    counts: Optional[CountsFn] = None,
    device: Optional[torch.device] = None,
) -> MixedDimEmbedding:
    """``counts`` may be None only on the meta device (planning): block popularity then
    follows a Zipf prior and the id maps are shapes without values."""
    _, big = _kept_full(schema, cfg, small_field_rows)
    data_counts = None
    meta = device is not None and torch.device(device).type == "meta"
    if cfg.blocks == "rows" and (counts is not None or not meta):
        if counts is None:
            raise ValueError("mixed_dim with blocks=rows needs id counts from the training data")
        data_counts = counts()
    blocks = _Blocks(big, cfg, data_counts)
    if cfg.alpha is not None:
        plan = blocks.plan(cfg.alpha, dim, cfg.round_dims)
    elif budget is not None:
        plan = plan_mixed_dim(schema, dim, budget, cfg, small_field_rows, blocks)
    else:
        raise BudgetError("mixed_dim: set compression.ratio / compression.bytes or embedding.mixed_dim.alpha")
    return MixedDimEmbedding(schema, dim, cfg, plan, small_field_rows, blocks.rank or None, device)
