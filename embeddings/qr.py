"""Quotient-remainder compositional embeddings (Shi et al., KDD 2020).

e(i) = W_q[s(i) // m] (op) W_r[s(i) % m], op in {mult, add, concat}; W_q has ceil(N/m)
rows, W_r has m rows; s(i) = a*i mod N scatters the ids first (``scatter``, default on).
Params (ceil(N/m) + m) * d: smallest at m ~ sqrt(N), so QR cannot compress a feature
beyond about sqrt(N)/2.

Composed PER ID, then pooled: sum_j W_q[q_j] * W_r[r_j]. The dlrm reference pools each
table first and composes the two sums, which is wrong for multi-hot bags (dlrm issue #366).
For multi-hot features the two lookups are one unpooled stock ``EmbeddingCollection`` (keys
f__q, f__r), so FBGEMM does them and DMP can shard both tables; compose + pool runs on the
looked-up rows. One-hot features (the schema's ``multi_hot`` False: bags of at most one id)
take a fast path: their W_q and W_r are pooled tables of ONE ``EmbeddingBagCollection`` with
the small features' full tables, and compose after pooling, which is exact there (a bag of
one id pools to its row; an empty bag to 0, and 0 * 0 = 0 + 0 = 0): FBGEMM's pooled CPU
backward costs a fraction of the unpooled one (docs/speed.md).
Initialisation (the reference draws U(sqrt(1/N), 1), not a symmetric range): for ``mult``,
W_r ~ U(1 - x, 1 + x) so the start is close to a plain table W_q; W_q (and for add/concat
both) ~ U(-sqrt(1/N), sqrt(1/N)) as a full table of N rows would be.

Example::

    emb = build_qr(schema, 32, QRConfig(operation="mult"), small_field_rows=200, budget=b)
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
    one_hot_split, split_features, sum_pool, table_device, value_keys,
)
from compactrec.embeddings.budget import BudgetError, bisect, full_table_bytes
from compactrec.embeddings.reserved import zero_reserved_rows
from compactrec.embeddings.seen import SeenIds, reserve_on, seen_bytes
from compactrec.trainer.config import QRConfig
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature


def scatter_multiplier(n: int) -> int:
    """The a of the permutation i -> a*i mod n of [0, n): the integer nearest n*(sqrt(5)-1)/2
    that is coprime to n (golden-ratio spacing keeps ids i, i+1, ..., i+k far apart for
    every small k). 1 (no change) for n <= 2."""
    if n <= 2:
        return 1
    a = max(1, round(n * (math.sqrt(5) - 1) / 2))
    while math.gcd(a, n) != 1:
        a += 1
    return a


@dataclass
class QRPlan:
    collisions: Dict[str, int]  # compressed feature -> m (rows of W_r); W_q has ceil(N / m)


def qr_rows(n: int, m: int) -> int:
    return -(-n // m) + m


class QREmbedding(CompressedEmbedding):
    def __init__(
        self, schema: FeatureSchema, dim: int, cfg: QRConfig, plan: QRPlan, small_field_rows: int,
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__(schema, dim)
        if cfg.operation == "concat" and dim % 2:
            raise ValueError(f"qr concat needs an even embedding dim, got {dim}")
        self.operation = cfg.operation
        self.cfg_scatter = cfg.scatter
        small, big = split_features(schema, small_field_rows)
        self.small = [f.name for f in small]
        self.big = [f.name for f in big]
        self.onehot, self.multi = one_hot_split(big)  # pooled fast path / unpooled compose-then-pool
        part = dim // 2 if cfg.operation == "concat" else dim
        self.part = part
        q_bags: List[EmbeddingBagConfig] = []
        r_bags: List[EmbeddingBagConfig] = []
        tables: List[EmbeddingConfig] = []
        for f in big:
            m = plan.collisions[f.name]
            bound = math.sqrt(1.0 / f.cardinality)
            r_lo, r_hi = (1 - cfg.remainder_init, 1 + cfg.remainder_init) if cfg.operation == "mult" else (-bound, bound)
            q_rows = -(-f.cardinality // m) + int(reserve_on(cfg.reserve_unseen))  # last: the reserved row
            q = (f"qr_q_{f.name}", f"{f.name}__q", q_rows, part, -bound, bound)
            r = (f"qr_r_{f.name}", f"{f.name}__r", m, part, r_lo, r_hi)
            if f.multi_hot:
                tables += [self._table(*q), self._table(*r)]
            else:
                q_bags.append(self._bag(*q))
                r_bags.append(self._bag(*r))
        # Table order = the pooled output's key order: small features, then all W_q, then all
        # W_r, so the one-hot W_q rows are one (B, F_1 * d) block and W_r another.
        bags = [full_config(f, dim) for f in small] + q_bags + r_bags
        self.ebc = EmbeddingBagCollection(tables=bags, device=table_device(device)) if bags else None
        self.ec = EmbeddingCollection(tables=tables, device=table_device(device)) if tables else None
        # each group's features as indices into ``big`` (the per-feature buffers' order)
        self.register_buffer("_onehot_at", torch.tensor([self.big.index(n) for n in self.onehot], dtype=torch.int64,
                                                        device=device), persistent=False)
        self.register_buffer("_multi_at", torch.tensor([self.big.index(n) for n in self.multi], dtype=torch.int64,
                                                       device=device), persistent=False)
        self.register_buffer(
            "collisions", torch.tensor([plan.collisions[n] for n in self.big], dtype=torch.int64, device=device),
            persistent=False,
        )
        # Converted ids are often frequency ranks (id 1 = most frequent) or arrival order: a
        # W_q row would hold m neighbours in rank, the m most frequent ids sharing one row.
        # i -> a*i mod N spreads them over W_q (a bijection: (q, r) stays unique per id).
        mult = [scatter_multiplier(f.cardinality) if cfg.scatter else 1 for f in big]
        self.register_buffer("scatter_mult", torch.tensor(mult, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("cards", torch.tensor([f.cardinality for f in big], dtype=torch.int64, device=device),
                             persistent=False)
        # reserve_unseen: an id no training forward looked up becomes ceil(N/m) * m, i.e. the
        # reserved W_q row (never trained: it keeps its small init) times W_r[0]; the product
        # of two trained rows would hand a new id other ids' embedding.
        self.seen = SeenIds([f.cardinality for f in big], device) if reserve_on(cfg.reserve_unseen) else None
        reserved_ids = [-(-f.cardinality // plan.collisions[f.name]) * plan.collisions[f.name] for f in big]
        # per-feature offsets into SeenIds' global id space and reserved ids, for every feature at once
        starts = self.seen.starts if self.seen is not None else [0] * len(big)
        self.register_buffer("seen_starts", torch.tensor(starts, dtype=torch.int64, device=device), persistent=False)
        self.register_buffer("reserved", torch.tensor(reserved_ids, dtype=torch.int64, device=device),
                             persistent=False)
        self._reserved_q = {f"qr_q_{f.name}": -(-f.cardinality // plan.collisions[f.name]) for f in big}
        zero_reserved_rows(self)

    def reserved_rows(self) -> Dict[str, int]:
        """The reserved W_q row of each compressed feature: 0, so mult gives 0 * W_r[0] = 0."""
        return dict(self._reserved_q) if self.seen is not None else {}

    @staticmethod
    def _table(name: str, feature: str, rows: int, dim: int, lo: float, hi: float) -> EmbeddingConfig:
        return EmbeddingConfig(
            name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[feature],
            weight_init_min=lo, weight_init_max=hi,
        )

    @staticmethod
    def _bag(name: str, feature: str, rows: int, dim: int, lo: float, hi: float) -> EmbeddingBagConfig:
        return EmbeddingBagConfig(
            name=name, embedding_dim=dim, num_embeddings=rows, feature_names=[feature], pooling=PoolingType.SUM,
            weight_init_min=lo, weight_init_max=hi,
        )

    def scattered(self, j: int, ids: torch.Tensor) -> torch.Tensor:
        """Ids (nnz,) of compressed feature j -> a_j * id mod N_j (int64, same device), and
        with ``reserve_unseen`` the reserved id ceil(N/m) * m for ids never trained."""
        return self.scattered_all(ids, torch.full_like(ids, j, dtype=torch.int64))

    def scattered_all(self, ids: torch.Tensor, fidx: torch.Tensor) -> torch.Tensor:
        """``scattered`` for the values of every compressed feature at once: ids (nnz,), fidx
        (nnz,) the compressed feature of each value -> (nnz,) int64."""
        ids = ids.to(torch.int64)
        out = ids if not self.cfg_scatter else ids * self.scatter_mult[fidx] % self.cards[fidx]
        if self.seen is None:
            return out
        return self.seen.route(ids + self.seen_starts[fidx], out, self.reserved[fidx])

    def compose(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """Per-id embedding from its quotient and remainder rows: (nnz, d)."""
        if self.operation == "mult":
            return q * r
        if self.operation == "add":
            return q + r
        return torch.cat([q, r], dim=1)

    def _embed_fused(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Unsharded: one fused qr_bag per feature (compose per id, pool) on the weights."""
        from compactrec.kernels import hash_scale_bag, qr_bag

        jts = features.to_dict()
        out: Dict[str, torch.Tensor] = {  # small features' full tables: a plain bag on their weights
            n: hash_scale_bag(jts[n].values(), jts[n].offsets(), self.table_weight(f"t_{n}"), hashed=False)
            for n in self.small
        }
        for j, name in enumerate(self.big):
            jt = jts[name]
            out[name] = qr_bag(
                self.scattered(j, jt.values()), jt.offsets(), self.table_weight(f"qr_q_{name}"),
                self.table_weight(f"qr_r_{name}"), collisions=int(self.collisions[j]), operation=self.operation,
            )
        return out

    def _split_ids(self, kjt: KeyedJaggedTensor, at: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Quotient and remainder ids (nnz,) of every value of ``kjt`` (features ``at`` of
        ``big``): one scatter, one division for all its features."""
        fidx = at[value_keys(kjt)]  # (nnz,): index in ``big`` of each value's feature
        ids = self.scattered_all(kjt.values(), fidx)
        m = self.collisions[fidx]
        return torch.div(ids, m, rounding_mode="floor"), ids % m

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        if self.fused and self.operation != "concat" and is_local(self.ebc, self.ec):
            return self._embed_fused(features)  # the fused op has mult and add
        return embed_pooled_and_multi(self, features)

    def _embed_pooled(self, small: Optional[KeyedJaggedTensor], onehot: Optional[KeyedJaggedTensor]) -> Dict[
        str, torch.Tensor
    ]:
        """Small features and one-hot compressed ones: ONE pooled lookup, then W_q (op) W_r on
        the pooled (B, F_1 * part) blocks (exact for bags of <= 1 id) -> {feature: (B, d)}."""
        parts = [small] if small is not None else []
        if onehot is not None:
            check_one_hot(onehot)
            q, r = self._split_ids(onehot, self._onehot_at)
            lengths, per_key = onehot.lengths(), onehot.length_per_key()
            parts.append(KeyedJaggedTensor(
                keys=[f"{n}__q" for n in self.onehot] + [f"{n}__r" for n in self.onehot], values=torch.cat([q, r]),
                lengths=torch.cat([lengths, lengths]), length_per_key=per_key * 2,
            ))
        kjt = parts[0] if len(parts) == 1 else KeyedJaggedTensor(
            keys=parts[0].keys() + parts[1].keys(),
            values=torch.cat([parts[0].values().to(torch.int64), parts[1].values()]),
            lengths=torch.cat([p.lengths().to(torch.int32) for p in parts]),
            length_per_key=parts[0].length_per_key() + parts[1].length_per_key(),
        )
        groups = [[n] for n in self.small]
        if onehot is not None:
            groups += [[f"{n}__q" for n in self.onehot], [f"{n}__r" for n in self.onehot]]
        cols = group_columns(self.ebc(kjt), groups)
        out = dict(zip(self.small, cols))
        if onehot is not None:
            q_rows, r_rows = cols[-2], cols[-1]  # (B, F_1 * part) each
            if self.operation == "concat":
                b, f1 = q_rows.shape[0], len(self.onehot)
                composed = torch.cat([q_rows.view(b, f1, self.part), r_rows.view(b, f1, self.part)], dim=2).view(b, -1)
            else:
                composed = self.compose(q_rows, r_rows)
            out.update(zip(self.onehot, composed.split(self.dim, dim=1)))
        return out

    def _embed_multi(self, multi: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        """Multi-hot compressed features: one unpooled lookup, compose per id, then pool (pooling
        first would be wrong: sum q * sum r != sum q * r)."""
        from compactrec.kernels import qr_compose_pool

        q_ids, r_ids = self._split_ids(multi, self._multi_at)
        lengths, per_key = multi.lengths(), multi.length_per_key()
        rows = self.ec(KeyedJaggedTensor(
            keys=[f"{n}__q" for n in self.multi] + [f"{n}__r" for n in self.multi],
            values=torch.cat([q_ids, r_ids]), lengths=torch.cat([lengths, lengths]), length_per_key=per_key * 2,
        ))
        q = join_rows([rows[f"{n}__q"].values() for n in self.multi])  # (nnz, d)
        r = join_rows([rows[f"{n}__r"].values() for n in self.multi])
        if self.operation == "concat":
            pooled = sum_pool(self.compose(q, r), lengths)
        else:  # compose per id, then pool, in one op (fused on GPU)
            pooled = qr_compose_pool(q, r, multi.offsets(), operation=self.operation)
        return dict(zip(self.multi, pooled.split(multi.stride())))  # (B, d) per feature


def _width(dim: int, cfg: QRConfig) -> int:
    """Width of the W_q and W_r rows: d/2 each for concat, d otherwise."""
    return dim // 2 if cfg.operation == "concat" else dim


def _fixed_bytes(schema: FeatureSchema, dim: int, small_field_rows: int, cfg: QRConfig) -> int:
    """Small features' full tables; with ``reserve_unseen`` + the id bits and a W_q row each."""
    small, big = split_features(schema, small_field_rows)
    extra = seen_bytes([f.cardinality for f in big]) + len(big) * _width(dim, cfg) * FP32 if reserve_on(cfg.reserve_unseen) else 0
    return full_table_bytes(small, dim) + extra


def qr_bytes(schema: FeatureSchema, dim: int, plan: QRPlan, small_field_rows: int, cfg: QRConfig = QRConfig()) -> int:
    """Bytes of the module built from ``plan`` (W_q + W_r rows of their width, plus fixed)."""
    _, big = split_features(schema, small_field_rows)
    rows = sum(qr_rows(f.cardinality, plan.collisions[f.name]) for f in big)
    return _fixed_bytes(schema, dim, small_field_rows, cfg) + rows * _width(dim, cfg) * FP32


def _collisions_for(f: SparseFeature, target_rows: float) -> int:
    """The m whose ceil(N/m) + m is closest to (not above, if possible) ``target_rows``:
    the smaller root of m^2 - t m + N = 0 (as in the reference, m ids share each W_q row
    and W_r is the small table), or sqrt(N) when t < 2 sqrt(N) (QR's floor)."""
    n, t = f.cardinality, target_rows
    disc = t * t - 4 * n
    if disc <= 0:
        return max(1, round(math.sqrt(n)))
    m = min(max(math.ceil((t - math.sqrt(disc)) / 2), 1), n)
    while m < math.sqrt(n) and qr_rows(n, m) > t:  # below sqrt(N), rows shrink as m grows
        m += 1
    return m


def plan_qr(schema: FeatureSchema, dim: int, budget: int, small_field_rows: int, cfg: QRConfig = QRConfig()) -> QRPlan:
    """Each feature's rows proportional to its cardinality; QR's floor of 2 sqrt(N) rows per
    feature caps the ratio (an error names the largest reachable one). Rows of concat are
    d/2 wide, so the same bytes buy twice as many."""
    _, big = split_features(schema, small_field_rows)
    fixed, width = _fixed_bytes(schema, dim, small_field_rows, cfg), _width(dim, cfg)
    left_rows = (budget - fixed) // (width * FP32)

    def plan_at(scale: float) -> QRPlan:
        return QRPlan({f.name: _collisions_for(f, max(scale * f.cardinality, 1.0)) for f in big})

    def rows_at(scale: float) -> int:
        p = plan_at(scale)
        return sum(qr_rows(f.cardinality, p.collisions[f.name]) for f in big)

    floor = rows_at(0.0)
    if floor > left_rows:
        best = full_table_bytes(schema.sparse, dim) / (fixed + floor * width * FP32)
        raise BudgetError(f"qr cannot reach this ratio: its smallest tables (m = sqrt(N)) give {best:.1f}x at most")
    plan = plan_at(bisect(rows_at, left_rows, 0.0, 1.0, increasing=True))
    # Small m moves rows in coarse steps (N/m): spend what is left feature by feature.
    used = sum(qr_rows(f.cardinality, plan.collisions[f.name]) for f in big)
    for f in sorted(big, key=lambda f: -f.cardinality):
        m = plan.collisions[f.name]
        if m > 1:
            extra = qr_rows(f.cardinality, m - 1) - qr_rows(f.cardinality, m)
            if 0 < extra <= left_rows - used:
                plan.collisions[f.name], used = m - 1, used + extra
    return plan


def build_qr(
    schema: FeatureSchema, dim: int, cfg: QRConfig, small_field_rows: int, budget: Optional[int],
    device: Optional[torch.device] = None,
) -> QREmbedding:
    _, big = split_features(schema, small_field_rows)
    if cfg.collisions is not None:
        plan = QRPlan({f.name: min(cfg.collisions, f.cardinality) for f in big})
    elif budget is not None:
        plan = plan_qr(schema, dim, budget, small_field_rows, cfg)
    else:
        raise BudgetError("qr: set compression.ratio / compression.bytes or embedding.qr.collisions")
    return QREmbedding(schema, dim, cfg, plan, small_field_rows, device)
