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
* The array starts at U(+-sqrt(1 / N_max)), the scale of the largest replaced full table.
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
from compactrec.hashing import splitmix64_np
from compactrec.kernels.robe.reference import P
from compactrec.trainer.config import RobeConfig

ARRAY = "robe_array"  # the table name


PACKED_KEY = "robe"  # the packed array's one feature: every (id, chunk) lookup


def chunk_key(feature: str, c: int) -> str:
    """The array's feature for chunk c of ``feature``'s ids (all of them share the one table)."""
    return f"{feature}__robe{c}"


@dataclass
class RobePlan:
    rows: int  # R: rows of Z values (chunk rows); |M| = R * Z; a multiple of pack(Z)


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


class RobeEmbedding(CompressedEmbedding):
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
        self.rows = plan.rows
        self.pack = pack(cfg.block)
        if plan.rows % self.pack:
            raise ValueError(f"robe: {plan.rows} chunk rows are not a multiple of pack {self.pack} (Z = {cfg.block})")
        self.full = EmbeddingBagCollection(tables=[full_config(f, dim) for f in small], device=table_device(device)) if small else None
        self.array: Optional[nn.Module] = None  # EmbeddingBagCollection (pack 1) | EmbeddingCollection
        bases: List[int] = []
        self.mult_id = self.mult_block = 0
        if big:
            bound = math.sqrt(1.0 / max(f.cardinality for f in big))
            if self.pack == 1:  # one pooled lookup per (feature, chunk)
                keys = [chunk_key(f.name, c) for f in big for c in range(self.num_blocks)]
                self.array = EmbeddingBagCollection(tables=[EmbeddingBagConfig(
                    name=ARRAY, embedding_dim=cfg.block, num_embeddings=plan.rows, feature_names=keys,
                    pooling=PoolingType.SUM, weight_init_min=-bound, weight_init_max=bound,
                )], device=table_device(device))
            else:  # packed rows: ids of one bag read different columns, so look up unpooled
                self.array = EmbeddingCollection(tables=[EmbeddingConfig(
                    name=ARRAY, embedding_dim=table_width(cfg.block), num_embeddings=plan.rows // self.pack,
                    feature_names=[PACKED_KEY], weight_init_min=-bound, weight_init_max=bound,
                )], device=table_device(device))
            bases, self.mult_id, self.mult_block = hash_params(schema, big, dim, cfg)
        # per compressed feature: its hash constant (a host-derived config constant, not state)
        self.register_buffer("bases", torch.tensor(bases, dtype=torch.int64, device=device), persistent=False)

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: the fused ``robe_bag``. Sharded (DMP): ``robe_rows`` -> one pooled lookup
        per (feature, chunk), or (packed rows) an unpooled lookup -> column gather ->
        ``scale_pool``. Every path covers all compressed features in one call."""
        from compactrec.kernels import robe_bag, robe_rows

        small, big = split_kjt(features, self.small, self.big)
        out: Dict[str, torch.Tensor] = {}
        if self.full is not None:
            out.update(self.full(small).to_dict())
        if big is None:
            return out
        ids = big.values()
        keys = value_keys(big)  # (nnz,): each value's compressed feature
        bases = self.bases[keys]
        if self.fused and is_local(self.array):
            weight = self._weight().view(-1, self.cfg.block)  # (R, Z): the packed table's memory
            pooled = robe_bag(ids, big.offsets(), bases, weight, dim=self.dim, mult_id=self.mult_id,
                              mult_block=self.mult_block)  # (F_c * B, d)
            out.update(zip(self.big, pooled.split(big.stride())))
            return out
        rows = robe_rows(ids, bases, num_blocks=self.num_blocks, num_rows=self.rows, mult_id=self.mult_id,
                         mult_block=self.mult_block)  # (nnz, d / Z)
        if self.pack > 1:
            out.update(zip(self.big, self._packed(big, rows).split(big.stride())))
            return out
        # Sum pooling commutes with concatenating the chunks: pooling each (feature, chunk) as
        # its own bag is exact, and FBGEMM pools Z-wide rows without an (nnz * d / Z, Z) output
        # (an unpooled lookup + pool measured 8x slower at B 2048, 26 features, Z = 8).
        pooled = self.array(_chunk_major(big, rows, keys, self.num_blocks))  # type: ignore[misc]
        values = pooled.values()  # (B, F_c * d): feature-major, chunks in order within a feature
        out.update(zip(self.big, values.split(self.dim, dim=1)))
        return out

    def _weight(self) -> torch.Tensor:
        bags = self.array.embedding_bags if self.pack == 1 else self.array.embeddings  # type: ignore[union-attr]
        return bags[ARRAY].weight

    def _packed(self, big: KeyedJaggedTensor, rows: torch.Tensor) -> torch.Tensor:
        """Sharded, pack > 1: chunk row r is columns (r % pack) Z.. of table row r // pack.
        rows (nnz, nb) -> pooled (F_c * B, d)."""
        from compactrec.kernels import scale_pool

        z, k = self.cfg.block, self.pack
        flat = rows.reshape(-1)
        looked = self.array(KeyedJaggedTensor(  # type: ignore[misc]
            keys=[PACKED_KEY], values=torch.div(flat, k, rounding_mode="floor"), lengths=big.lengths() * self.num_blocks,
        ))[PACKED_KEY].values()  # (nnz * nb, k Z): an id's chunks are consecutive
        slot = (flat % k).view(-1, 1, 1).expand(-1, 1, z)
        chunks = looked.view(-1, k, z).gather(1, slot)  # (nnz * nb, 1, Z)
        return scale_pool(chunks.reshape(rows.shape[0], self.dim), big.offsets())


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


def robe_bytes(schema: FeatureSchema, dim: int, cfg: RobeConfig, plan: RobePlan, small_field_rows: int) -> int:
    small, big = split_features(schema, small_field_rows)
    return full_table_bytes(small, dim) + (plan.rows * cfg.block * FP32 if big else 0)


def plan_robe(schema: FeatureSchema, dim: int, budget: int, cfg: RobeConfig, small_field_rows: int) -> RobePlan:
    """The array fills what the small features' full tables leave: R = left // (Z * 4)."""
    small, _ = split_features(schema, small_field_rows)
    fixed = full_table_bytes(small, dim)
    width, k = table_width(cfg.block), pack(cfg.block)
    table_rows = (budget - fixed) // (width * FP32)
    if table_rows < 1:
        raise BudgetError(f"robe: budget {budget} B is below the {fixed + width * FP32} B of the small features' "
                          f"full tables plus one table row of {width} values")
    return RobePlan(rows=min(table_rows, P // k) * k)


def build_robe(
    schema: FeatureSchema, dim: int, cfg: RobeConfig, small_field_rows: int, budget: Optional[int],
    device: Optional[torch.device] = None,
) -> RobeEmbedding:
    if cfg.block < 1 or dim % cfg.block:
        raise ValueError(f"embedding.robe.block={cfg.block} must divide model.embedding_dim={dim}")
    if cfg.size is not None:
        k = pack(cfg.block)
        plan = RobePlan(rows=-(-cfg.size // (cfg.block * k)) * k)  # whole table rows
        if not 1 <= plan.rows <= P:
            raise ValueError(f"embedding.robe.size={cfg.size}: the array needs 1 to {P} rows of {cfg.block}")
    elif budget is not None:
        plan = plan_robe(schema, dim, budget, cfg, small_field_rows)
    else:
        raise BudgetError("robe: set compression.ratio / compression.bytes or embedding.robe.size")
    return RobeEmbedding(schema, dim, cfg, plan, small_field_rows, device)
