"""``embedding.kind`` -> the embedding module (KeyedJaggedTensor in, KeyedTensor out).

Sizes come from the method's own sub-config when given (``embedding.hash.rows``, ...), else
from ``compression`` (a ratio or a byte budget) through the method's planner. Tables are
stored at ``embedding.precision`` (``embeddings/precision.py``); below fp32 the budget is
met by the build at that precision, not by the planner's fp32 arithmetic.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from compactrec.embeddings.accounting import full_embedding_bytes, module_bytes
from compactrec.embeddings.budget import BudgetError, budget_bytes
from compactrec.embeddings.full import build_full
from compactrec.embeddings.mixed_dim import CountsFn
from compactrec.embeddings.precision import element_size, set_table_precision
from compactrec.embeddings.seen import AUTO_BUDGET_SHARE, decide_reserve, seen_bytes
from compactrec.trainer.config import CompressionConfig, EmbeddingConfig
from compactrec.data.reader.manifest import FeatureSchema


def _budget(compression: CompressionConfig, schema: FeatureSchema, dim: int) -> Optional[int]:
    if compression.ratio is None and compression.bytes is None:
        return None
    return budget_bytes(compression, schema, dim)


class TableSizeError(ValueError):
    """A table would be too large to train (the message names the feature and the fix)."""


def check_table_rows(module: nn.Module, max_rows: int) -> None:
    """Every stock TorchRec table under ``module`` has at most ``max_rows`` rows
    (``embedding.max_table_rows``); checked on the meta-built module, before any memory is
    taken. A larger table means ids that are not a dense id space (raw Criteo hex values:
    ~2^32 rows).

    Raises:
        TableSizeError: naming the feature(s), the table, its rows and bytes.
    """
    from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            configs = m.embedding_bag_configs()
        elif isinstance(m, EmbeddingCollection):
            configs = m.embedding_configs()
        else:
            continue
        for c in configs:
            if c.num_embeddings > max_rows:
                gb = c.num_embeddings * c.embedding_dim * 4 / 1e9
                raise TableSizeError(
                    f"feature {', '.join(c.feature_names)}: table {c.name} would have {c.num_embeddings:,} rows "
                    f"({gb:,.1f} GB at dim {c.embedding_dim}), above embedding.max_table_rows={max_rows:,}: the "
                    "data's ids are not a dense id space (raw Criteo values?). Convert with the default frequency "
                    "map or --max-ids N (docs/data.md), use a compressing method, or raise embedding.max_table_rows"
                )


def build_embeddings(
    cfg: EmbeddingConfig,
    compression: CompressionConfig,
    schema: FeatureSchema,
    dim: int,
    device: Optional[torch.device] = None,
    counts: Optional[CountsFn] = None,
) -> nn.Module:
    """Build the configured method over ``schema``'s sparse features, all of width ``dim``.

    ``counts`` lazily returns id frequencies of a training sample (needed by mixed_dim rows).
    Raises ``BudgetError`` when the method cannot meet the requested compression, and
    ``TableSizeError`` when a table would have more than ``cfg.max_table_rows`` rows.
    """
    counts = _cached(counts)
    budget = None if cfg.kind == "full" else _budget(compression, schema, dim)  # full ignores `compression`
    try:
        module = _build_at(cfg, budget, schema, dim, device, counts, cfg.small_field_rows)
    except BudgetError as first:
        if budget is None:
            raise
        module = _without_small_fields(cfg, compression, budget, schema, dim, device, counts, first)
    check_table_rows(module, cfg.max_table_rows)
    note = reserve_note(cfg, budget, schema)
    if note:
        print(note, flush=True)
    return module


def _cached(counts: Optional[CountsFn]) -> Optional[CountsFn]:
    """Id counts read once however often the planners ask (the budget search builds again)."""
    if counts is None:
        return None
    memo: list = []
    return lambda: memo[0] if memo else (memo.append(counts()) or memo[0])  # type: ignore[func-returns-value]


def _without_small_fields(cfg: EmbeddingConfig, compression: CompressionConfig, budget: int, schema: FeatureSchema, dim: int,
                          device: Optional[torch.device], counts: Optional[CountsFn], first: BudgetError) -> nn.Module:
    """``embedding.small_field_rows`` is a budget decision: when the budget cannot be met with
    the small features kept whole, they are compressed like the others. When even that fails,
    the error says the method's reachable maximum in the same words for every method."""
    reason = first
    if cfg.small_field_rows > 0:
        try:
            module = _build_at(cfg, budget, schema, dim, device, counts, 0)
            small = [f.name for f in schema.sparse if 1 < f.cardinality <= cfg.small_field_rows]
            print(f"compactrec: {cfg.kind}: the budget needs the small features compressed too "
                  f"(embedding.small_field_rows={cfg.small_field_rows} would keep {len(small)} whole)", flush=True)
            return module
        except BudgetError as e:
            reason = e  # the same build as the bisection below (small features compressed): one story
    if cfg.precision != "fp32":
        reason = f"{reason} (the planner's own figures count fp32 tables)"
    full = full_embedding_bytes(schema, dim)
    best = reachable_ratio(cfg, schema, dim, counts)
    asked = f"{compression.ratio:g}x" if compression.ratio is not None else f"{full / budget:.1f}x"
    at = f" at embedding.precision={cfg.precision}" if cfg.precision != "fp32" else ""
    raise BudgetError(
        f"{cfg.kind} cannot reach {asked} ({budget:,} bytes for {full:,} of full fp32 tables): {reason}. "
        f"{cfg.kind} reaches at most {best:.1f}x here{at}"
    ) from None


def reachable_ratio(cfg: EmbeddingConfig, schema: FeatureSchema, dim: int, counts: Optional[CountsFn] = None) -> float:
    """The largest compression ratio the method's planner meets on ``schema`` (small features
    compressed too), by bisection over log(ratio) of meta-device builds; 1.0 if none."""
    import math

    full = full_embedding_bytes(schema, dim)
    meta = torch.device("meta")

    def ok(ratio: float) -> bool:
        try:
            _build_at(cfg, int(full / ratio), schema, dim, meta, counts, 0)
            return True
        except BudgetError:
            return False

    lo, hi = 0.0, math.log(max(2.0, float(full)))  # at most one byte left
    if not ok(1.0):
        return 1.0
    if ok(math.exp(hi)):
        return math.exp(hi)
    for _ in range(24):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ok(math.exp(mid)) else (lo, mid)
    return math.exp(lo)


def _build_at(
    cfg: EmbeddingConfig,
    budget: Optional[int],
    schema: FeatureSchema,
    dim: int,
    device: Optional[torch.device],
    counts: Optional[CountsFn],
    small: int,
) -> nn.Module:
    """The method with its tables at ``cfg.precision``, within ``budget`` bytes.

    Below fp32 the planners' fp32 arithmetic would leave bytes unused, so this searches the
    fp32 budget ``b`` handed to the planner: the largest ``b`` whose build at the precision
    (on meta: shapes only) still fits ``budget``. The predicate "the planner refuses ``b``, or
    the build fits" is monotone in ``b`` (bigger budgets give bigger modules; the planner
    refuses only below its minimum), so bisection finds it; a planner that refuses the answer
    means the method cannot reach ``budget`` at any ``b``.
    """
    if budget is None or cfg.precision == "fp32":
        return set_table_precision(_build(cfg, budget, schema, dim, device, counts, small), cfg.precision)
    meta = torch.device("meta")

    def fits_or_refused(b: int) -> bool:
        try:
            built = set_table_precision(_build(cfg, b, schema, dim, meta, counts, small), cfg.precision)
        except BudgetError:
            return True
        return module_bytes(built) <= budget

    lo, hi = budget, budget * 4 // element_size(cfg.precision) + 1  # at fp32, ``budget`` fits by construction
    if fits_or_refused(hi):
        lo = hi
    while hi - lo > max(1, lo >> 14):  # to 1/16384 of the budget: ~15 meta builds
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits_or_refused(mid) else (lo, mid)
    return set_table_precision(_build(cfg, lo, schema, dim, device, counts, small), cfg.precision)


def _decided(sub, budget: Optional[int], schema: FeatureSchema):
    """The method's sub-config with ``reserve_unseen`` decided: an unset flag is on while the
    id bits fit ``AUTO_BUDGET_SHARE`` of the budget (embeddings/seen.py)."""
    on = decide_reserve(sub.reserve_unseen, budget, schema.cardinalities)
    return sub if sub.reserve_unseen is on else dataclasses.replace(sub, reserve_unseen=on)


def reserve_note(cfg: EmbeddingConfig, budget: Optional[int], schema: FeatureSchema) -> Optional[str]:
    """A log line when an unset ``reserve_unseen`` is decided off by the budget, else None."""
    sub = getattr(cfg, cfg.kind, None)
    if sub is None or not hasattr(sub, "reserve_unseen") or sub.reserve_unseen is not None:
        return None
    if decide_reserve(None, budget, schema.cardinalities):
        return None
    return (f"compactrec: {cfg.kind}: reserve_unseen off: its id bits ({seen_bytes(schema.cardinalities):,} B) would "
            f"take more than {AUTO_BUDGET_SHARE:.0%} of the {budget:,} B budget; new ids read shared rows "
            f"(set embedding.{cfg.kind}.reserve_unseen=true to keep them)")


def _build(
    cfg: EmbeddingConfig,
    budget: Optional[int],
    schema: FeatureSchema,
    dim: int,
    device: Optional[torch.device],
    counts: Optional[CountsFn],
    small: int,
) -> nn.Module:
    if cfg.kind == "full":  # the baseline ignores `compression`, so sweeps can include it
        return build_full(schema, dim, device)
    if cfg.kind == "hash":
        from compactrec.embeddings.hashing_trick import build_hash

        return build_hash(schema, dim, _decided(cfg.hash, budget, schema), small, budget, device)
    if cfg.kind == "qr":
        from compactrec.embeddings.qr import build_qr

        return build_qr(schema, dim, _decided(cfg.qr, budget, schema), small, budget, device)
    if cfg.kind == "memcom":
        from compactrec.embeddings.memcom import build_memcom

        return build_memcom(schema, dim, cfg.memcom, small, budget, device)
    if cfg.kind == "mixed_dim":
        from compactrec.embeddings.mixed_dim import build_mixed_dim

        return build_mixed_dim(schema, dim, cfg.mixed_dim, small, budget, counts, device)
    if cfg.kind == "cafe":
        from compactrec.embeddings.cafe import build_cafe

        return build_cafe(schema, dim, _decided(cfg.cafe, budget, schema), small, budget, device)
    if cfg.kind == "robe":
        from compactrec.embeddings.robe import build_robe

        return build_robe(schema, dim, _decided(cfg.robe, budget, schema), small, budget, device)
    raise ValueError(f"unknown embedding.kind {cfg.kind!r}")
