"""ROBE, Random Offset Block Embedding (Desai, Chou, Shrivastava, MLSys 2022).

One shared array M of |M| trainable values replaces every compressed feature's table. Id x of
feature e (width d) reads d / Z chunks of Z consecutive values; chunk c starts at a hashed
offset and the array is circular. Gradients of every read accumulate in M; its size is set
by the budget alone, so any ratio is reachable.

Choices (all documented in docs/methods.md, ROBE):
* The array is stored as an embedding table ``robe_array`` of R = |M| / Z rows of Z values,
  and offsets are restricted to multiples of Z: chunk c of id x is row o(x, c) = ((A e + B x + C c + D) mod P) mod R, the paper's universal hash with R in
  place of |M| (P = 2^31 - 1; A..D drawn in [1, P) from ``seed``). A chunk is then one whole
  row: the circular wrap never splits a chunk, so DMP shards the array row-wise (or table- or
  column-wise) like any table, and each (id, chunk) is one stock lookup. The price: chunks of
  different ids either coincide or are disjoint (the paper's arbitrary offsets also let them
  overlap partly). At Z = 1 the two are the same: element-wise hashing.
* Z a multiple of 4: an ``EmbeddingBagCollection`` table of width Z, one feature per
  (compressed feature, chunk). Other Z: TorchRec's fused kernels assert widths divisible by 4,
  so an ``EmbeddingCollection`` table of width lcm(Z, 4) holds lcm(Z, 4) / Z chunk rows per row
  (``pack``); its memory is the same (R, Z) array row-major.
* Features with at most ``small_field_rows`` ids keep a full table, like every method here
  (the factory compresses them too when the budget needs it).
* ``group_by``: ``model`` one array (the paper), ``feature`` one per compressed feature,
  ``groups`` one per named group plus one for the rest; rows split in proportion to the
  groups' full-table rows (``split_rows``). Each is a ``RobeArray``, table ``robe_array`` (one)
  or ``robe_array_<k>``.
* An array starts at U(+-sqrt(1 / N_max)), the scale of the largest full table it replaces.
* With rowwise Adagrad (the default sparse optimizer) the Z values of a row share one
  accumulator, and every id that reads the row shares it (docs/methods.md).

Paths: unsharded, the fused ``robe_bag`` op (hash -> gather chunks -> pool in one pass) on the
array's weight; sharded (DMP), ``robe_rows`` expands the ids into (id, chunk) rows and the
collection pools each (feature, chunk) over the bag (exact: sum pooling commutes with the
concatenation of chunks), so its (B, F_c * d) output is already the embeddings, feature-major;
with packed rows (Z not a multiple of 4) the rows are looked up unpooled, the chunk's Z columns
gathered, and ``scale_pool`` sums them per bag.

Example::

    emb = build_robe(schema, 32, RobeConfig(block=8), small_field_rows=200, budget=b)
    kt = emb(kjt)       # KeyedTensor, values (B, F * 32)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, EmbeddingConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.embeddings.accounting import FP32
from compactrec.embeddings.base import CompressedEmbedding, full_config, is_local, split_features, split_kjt, table_device, value_keys
from compactrec.embeddings.budget import BudgetError, full_table_bytes
from compactrec.embeddings.reserved import zero_reserved_rows
from compactrec.embeddings.seen import SeenIds, reserve_on, seen_bytes
from compactrec.hashing import splitmix64_np
from compactrec.kernels.robe.reference import P
from compactrec.trainer.config import RobeConfig

ARRAY = "robe_array"  # the table name


def chunk_key(feature: str, c: int) -> str:
    """The array's feature for chunk c of ``feature``'s ids (all of them share the one table)."""
    return f"{feature}__robe{c}"


@dataclass
class RobePlan:
    rows: List[int]  # per array: R, rows of Z values (chunk rows); |M| = R * Z; multiples of pack(Z)


def table_width(z: int) -> int:
    """Width of the stored table: lcm(Z, 4). FBGEMM's fused kernels (TorchRec asserts it, CPU
    too) want widths divisible by 4, so for Z = 1, 2, 3, 6, ... pack(Z) = width / Z chunk rows
    share one table row; its flat memory is the (R, Z) array row-major either way."""
    return z * 4 // math.gcd(z, 4)


def pack(z: int) -> int:
    return table_width(z) // z


def hash_constants(seed: int) -> Tuple[int, int, int, int]:
    """(A, B, C, D) in [1, P), fixed by ``seed`` (splitmix64 of 0..3: stable across numpy versions)."""
    a, b, c, d = (int(v) % (P - 1) + 1 for v in splitmix64_np(np.arange(4, dtype=np.uint64), seed))
    return a, b, c, d


def hash_params(schema: FeatureSchema, big: List[SparseFeature], dim: int, cfg: RobeConfig) -> Tuple[List[int], int, int]:
    """(base per compressed feature, mult_id, mult_block) of o(x, c) = ((base_e + mult_id x +
    mult_block c) mod P) mod R. universal: base_e = (A e + D) mod P with e the feature's schema
    index; identity (tests): feature e's ids read rows start_e + x d/Z + c, disjoint for R >= sum N d/Z."""
    nb = dim // cfg.block
    if cfg.hash == "identity":
        starts = np.cumsum([0] + [f.cardinality * nb for f in big]).tolist()
        if starts[-1] > P:
            raise ValueError(f"robe identity hash: {starts[-1]} rows exceed P = {P}")
        return starts[:-1], nb, 1
    a, b, c, d = hash_constants(cfg.seed)
    index = {f.name: e for e, f in enumerate(schema.sparse)}
    return [(a * index[f.name] + d) % P for f in big], b, c


class RobeArray(nn.Module):
    """One shared array over ``names`` (compressed features, schema order): its table, hash
    constants and both lookup paths. ``forward(kjt of names) -> [(B, d) per name]``."""

    def __init__(self, schema: FeatureSchema, names: List[str], dim: int, cfg: RobeConfig, rows: int, table: str,
                 device: Optional[torch.device] = None) -> None:
        super().__init__()
        self.cfg, self.dim, self.names, self.rows, self.table = cfg, dim, names, rows, table
        self.num_blocks = dim // cfg.block
        self.pack = pack(cfg.block)
        # reserve_unseen: one table row past the R hashed chunk rows; never-trained ids read
        # chunk row R (table row R / pack) for every chunk: zeros (embeddings/reserved.py)
        self.reserve = int(reserve_on(cfg.reserve_unseen))
        if rows % self.pack:
            raise ValueError(f"robe: {rows} chunk rows are not a multiple of pack {self.pack} (Z = {cfg.block})")
        feats = [f for f in schema.sparse if f.name in set(names)]
        bound = math.sqrt(1.0 / max(f.cardinality for f in feats))
        self.packed_key = f"{table}__ids"  # the packed array's one feature: every (id, chunk) lookup
        if self.pack == 1:  # one pooled lookup per (feature, chunk)
            keys = [chunk_key(f.name, c) for f in feats for c in range(self.num_blocks)]
            self.array: nn.Module = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
                name=table, embedding_dim=cfg.block, num_embeddings=rows + self.reserve, feature_names=keys,
                pooling=PoolingType.SUM, weight_init_min=-bound, weight_init_max=bound,
            )], device=table_device(device))
        else:  # packed rows: ids of one bag read different columns, so look up unpooled
            self.array = EmbeddingCollection(tables=[EmbeddingConfig(
                name=table, embedding_dim=table_width(cfg.block), num_embeddings=rows // self.pack + self.reserve,
                feature_names=[self.packed_key], weight_init_min=-bound, weight_init_max=bound,
            )], device=table_device(device))
        bases, self.mult_id, self.mult_block = hash_params(schema, feats, dim, cfg)
        # per feature: its hash constant (a host-derived config constant, not state)
        self.register_buffer("bases", torch.tensor(bases, dtype=torch.int64, device=device), persistent=False)

    def reserved_row(self) -> int:
        """The table row never-trained ids read (all its chunk rows)."""
        return self.rows // self.pack

    def forward(self, big: KeyedJaggedTensor, fused: bool, known: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        """``known`` (nnz,) bool, with reserve_unseen: False sends the value to the reserved row
        (the collection path: the fused op hashes inside and has no such row)."""
        from compactrec.kernels import robe_bag, robe_rows

        ids = big.values()
        keys = value_keys(big)  # (nnz,): each value's feature in this array
        bases = self.bases[keys]
        if fused and known is None and is_local(self.array):
            weight = self.weight().view(-1, self.cfg.block)  # (R, Z): the packed table's memory
            pooled = robe_bag(ids, big.offsets(), bases, weight, dim=self.dim, mult_id=self.mult_id,
                              mult_block=self.mult_block)  # (F * B, d)
            return list(pooled.split(big.stride()))
        rows = robe_rows(ids, bases, num_blocks=self.num_blocks, num_rows=self.rows, mult_id=self.mult_id,
                         mult_block=self.mult_block)  # (nnz, d / Z)
        if known is not None:
            rows = torch.where(known[:, None], rows, torch.full_like(rows, self.rows))
        if self.pack > 1:
            return list(self._packed(big, rows).split(big.stride()))
        # Sum pooling commutes with concatenating the chunks: pooling each (feature, chunk) as
        # its own bag is exact, and FBGEMM pools Z-wide rows without an (nnz * d / Z, Z) output
        # (an unpooled lookup + pool measured 8x slower at B 2048, 26 features, Z = 8).
        pooled = self.array(_chunk_major(big, rows, keys, self.num_blocks))
        return list(pooled.values().split(self.dim, dim=1))  # (B, F * d): feature-major, chunks in order

    def weight(self) -> torch.Tensor:
        bags = self.array.embedding_bags if self.pack == 1 else self.array.embeddings  # type: ignore[union-attr]
        return bags[self.table].weight

    def _packed(self, big: KeyedJaggedTensor, rows: torch.Tensor) -> torch.Tensor:
        """Sharded, pack > 1: chunk row r is columns (r % pack) Z.. of table row r // pack.
        rows (nnz, nb) -> pooled (F * B, d)."""
        from compactrec.kernels import scale_pool

        z, k = self.cfg.block, self.pack
        flat = rows.reshape(-1)
        looked = self.array(KeyedJaggedTensor(
            keys=[self.packed_key], values=torch.div(flat, k, rounding_mode="floor"),
            lengths=big.lengths() * self.num_blocks,
        ))[self.packed_key].values()  # (nnz * nb, k Z): an id's chunks are consecutive
        slot = (flat % k).view(-1, 1, 1).expand(-1, 1, z)
        chunks = looked.view(-1, k, z).gather(1, slot)  # (nnz * nb, 1, Z)
        return scale_pool(chunks.reshape(rows.shape[0], self.dim), big.offsets())


class RobeEmbedding(CompressedEmbedding):
    """Small features: full tables. Compressed features: one ``RobeArray`` per group
    (``embedding.robe.group_by``: one for the model, one per feature, or the named groups)."""

    def __init__(
        self, schema: FeatureSchema, dim: int, cfg: RobeConfig, plan: RobePlan, small_field_rows: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        self.cfg = cfg
        small, big = split_features(schema, small_field_rows)
        self.small = [f.name for f in small]
        self.big = [f.name for f in big]
        self.num_blocks = dim // cfg.block
        self.pack = pack(cfg.block)
        self.groups = feature_groups(cfg, self.big, schema.sparse_names)
        if len(plan.rows) != len(self.groups):
            raise ValueError(f"robe: a plan of {len(plan.rows)} arrays for {len(self.groups)} groups")
        self.full = EmbeddingBagCollection(tables=[full_config(f, dim) for f in small], device=table_device(device)) if small else None
        names = array_names(len(self.groups))
        self.arrays = nn.ModuleList(RobeArray(schema, g, dim, cfg, r, n, device)
                                    for g, r, n in zip(self.groups, plan.rows, names))
        # reserve_unseen: a bit per id of every compressed feature (in self.big's order)
        self.seen = SeenIds([f.cardinality for f in big], device) if reserve_on(cfg.reserve_unseen) and big else None
        grouped = [n for g in self.groups for n in g]  # the order of the big KJT in embed
        starts = [self.seen.starts[self.big.index(n)] for n in grouped] if self.seen is not None else [0] * len(grouped)
        self.register_buffer("_seen_starts", torch.tensor(starts, dtype=torch.int64, device=device), persistent=False)
        zero_reserved_rows(self)

    def reserved_rows(self) -> Dict[str, int]:
        """Each array's reserved table row (every chunk of a never-trained id reads it)."""
        return {a.table: a.reserved_row() for a in self.arrays} if self.seen is not None else {}

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: the fused ``robe_bag`` per array. Sharded (DMP): ``robe_rows`` -> one
        pooled lookup per (feature, chunk), or (packed rows) an unpooled lookup -> column
        gather -> ``scale_pool``. Each array covers all its features in one call."""
        small, big = split_kjt(features, self.small, [n for g in self.groups for n in g])
        out: Dict[str, torch.Tensor] = {}
        if self.full is not None:
            out.update(self.full(small).to_dict())
        if big is None:
            return out
        parts = big.split([len(g) for g in self.groups]) if len(self.groups) > 1 else [big]
        known = [None] * len(parts)
        if self.seen is not None:  # one bit lookup for every compressed value, split per array
            gids = big.values().to(torch.int64) + self._seen_starts[value_keys(big)]
            known = list(self.seen.looked_up(gids).split([p.values().numel() for p in parts]))
        for group, part, array, k in zip(self.groups, parts, self.arrays, known):
            out.update(zip(group, array(part, self.fused, k)))
        return out


def array_names(n: int) -> List[str]:
    """Table names: ``robe_array`` for one array (the default), ``robe_array_<k>`` for several."""
    return [ARRAY] if n == 1 else [f"{ARRAY}_{k}" for k in range(n)]


def feature_groups(cfg: RobeConfig, big: List[str], every: List[str]) -> List[List[str]]:
    """The compressed features of each array, schema order within a group. ``group_by``:
    ``model`` one array; ``feature`` one per feature; ``groups`` the lists in ``cfg.groups``
    (features of none of them share one more array; small features named there keep their full
    table). Raises ValueError for a name that is no feature or is in two groups."""
    if not big:
        return []
    if cfg.group_by == "model":
        return [list(big)]
    if cfg.group_by == "feature":
        return [[n] for n in big]
    if cfg.group_by != "groups":
        raise ValueError(f"embedding.robe.group_by={cfg.group_by!r}: must be model, feature or groups")
    known, seen = set(big), set()
    groups = []
    for g in cfg.groups:
        for n in g:
            if n in seen:
                raise ValueError(f"embedding.robe.groups: feature {n!r} is in two groups")
            seen.add(n)
        groups.append([n for n in big if n in set(g)])
    unknown = sorted(seen - known - set(every))
    if unknown:
        raise ValueError(f"embedding.robe.groups: {', '.join(unknown)} not compressed features of the schema")
    rest = [n for n in big if n not in seen]
    return [g for g in groups if g] + ([rest] if rest else [])


def _chunk_major(big: KeyedJaggedTensor, rows: torch.Tensor, keys: torch.Tensor, nb: int) -> KeyedJaggedTensor:
    """rows (nnz, nb) of a feature-major KJT -> the KJT of keys (feature, chunk): key (f, c)
    holds chunk c of feature f's ids with f's bags (lengths repeated nb times)."""
    per_key = big.length_per_key()  # host ints: no device read
    counts = rows.new_tensor(per_key)
    starts = torch.cumsum(counts, 0) - counts
    j = torch.arange(rows.shape[0], device=rows.device)
    c = torch.arange(nb, device=rows.device)
    # value j of feature f, chunk c -> starts_f nb + c n_f + (j - starts_f)
    pos = (starts[keys] * (nb - 1) + j)[:, None] + c[None, :] * counts[keys][:, None]
    ordered = torch.empty_like(rows.reshape(-1)).scatter_(0, pos.reshape(-1), rows.reshape(-1))
    f, b = len(per_key), big.stride()
    lengths = big.lengths().reshape(f, 1, b).expand(f, nb, b).reshape(-1)
    names = [chunk_key(k, i) for k in big.keys() for i in range(nb)]
    return KeyedJaggedTensor(keys=names, values=ordered, lengths=lengths,
                             length_per_key=[n for n in per_key for _ in range(nb)])


def _reserve_bytes(big: List[SparseFeature], groups: int, cfg: RobeConfig) -> int:
    """reserve_unseen: the id bits and one table row per array."""
    if not reserve_on(cfg.reserve_unseen) or not big:
        return 0
    return seen_bytes([f.cardinality for f in big]) + groups * table_width(cfg.block) * FP32


def robe_bytes(schema: FeatureSchema, dim: int, cfg: RobeConfig, plan: RobePlan, small_field_rows: int) -> int:
    small, big = split_features(schema, small_field_rows)
    return full_table_bytes(small, dim) + sum(plan.rows) * cfg.block * FP32 + _reserve_bytes(big, len(plan.rows), cfg)


def split_rows(schema: FeatureSchema, groups: List[List[str]], total_rows: int, k: int) -> List[int]:
    """``total_rows`` table rows (of pack ``k`` chunk rows each) over the arrays in proportion
    to the full-table rows of their features (every array the same compression), at least
    one each; returned in chunk rows."""
    card = {f.name: f.cardinality for f in schema.sparse}
    weight = [sum(card[n] for n in g) for g in groups]
    rows = [max(1, int(total_rows * w / sum(weight))) for w in weight]
    return [min(r, P // k) * k for r in rows]


def plan_robe(schema: FeatureSchema, dim: int, budget: int, cfg: RobeConfig, small_field_rows: int) -> RobePlan:
    """The arrays fill what the small features' full tables leave: left // (width * 4) table
    rows in all, split over the arrays (``split_rows``)."""
    small, big = split_features(schema, small_field_rows)
    groups = feature_groups(cfg, [f.name for f in big], schema.sparse_names)
    fixed = full_table_bytes(small, dim) + _reserve_bytes(big, len(groups), cfg)
    width, k = table_width(cfg.block), pack(cfg.block)
    table_rows = (budget - fixed) // (width * FP32)
    if table_rows < max(1, len(groups)):
        bits = ", the id bits and a reserved row per array" if reserve_on(cfg.reserve_unseen) and big else ""
        raise BudgetError(f"robe: budget {budget} B is below the {fixed + max(1, len(groups)) * width * FP32} B of the "
                          f"small features' full tables{bits} plus one table row of {width} values per array")
    return RobePlan(rows=split_rows(schema, groups, table_rows, k))


def build_robe(
    schema: FeatureSchema, dim: int, cfg: RobeConfig, small_field_rows: int, budget: Optional[int],
    device: Optional[torch.device] = None,
) -> RobeEmbedding:
    if cfg.block < 1 or dim % cfg.block:
        raise ValueError(f"embedding.robe.block={cfg.block} must divide model.embedding_dim={dim}")
    if cfg.size is not None:  # |M| over every array, split like a budget
        k = pack(cfg.block)
        table_rows = -(-cfg.size // (cfg.block * k))  # whole table rows
        if not 1 <= table_rows * k <= P:
            raise ValueError(f"embedding.robe.size={cfg.size}: the array needs 1 to {P} rows of {cfg.block}")
        _, big = split_features(schema, small_field_rows)
        groups = feature_groups(cfg, [f.name for f in big], schema.sparse_names)
        plan = RobePlan(rows=split_rows(schema, groups, table_rows, k))
    elif budget is not None:
        plan = plan_robe(schema, dim, budget, cfg, small_field_rows)
    else:
        raise BudgetError("robe: set compression.ratio / compression.bytes or embedding.robe.size")
    return RobeEmbedding(schema, dim, cfg, plan, small_field_rows, device)
