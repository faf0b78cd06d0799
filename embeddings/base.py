"""What every compressed embedding module shares.

A method is an ``nn.Module`` that looks like an ``EmbeddingBagCollection`` to the model:
``forward(KeyedJaggedTensor) -> KeyedTensor`` (keys = the schema's features, each of width
``dim``) and ``embedding_bag_configs()`` (one virtual config per feature, which TorchRec's
``SparseArch`` reads for names and width). Inside, a method remaps ids and calls stock
TorchRec collections (``EmbeddingBagCollection`` / ``EmbeddingCollection``), so FBGEMM does
the lookups and DMP can shard the tables.

Features with few ids (``small_field_rows``) keep a full table: compressing them saves
nothing and costs accuracy (docs/methods.md, CAFE).
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Dict, Iterator, List, Optional, Tuple

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig, PoolingType
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature


_TABLE_DEVICE: ContextVar[Optional[torch.device]] = ContextVar("compactrec_table_device", default=None)


@contextmanager
def tables_on(device: torch.device | str) -> Iterator[None]:
    """Build the stock TorchRec collections (the tables DMP shards) and CAFE's sketch on
    ``device`` inside this block, everything else (id maps, projections, moduli) where the
    builder's ``device`` says. ``tables_on("meta")`` before ``shard_model`` is TorchRec's
    pattern: DMP materialises only each rank's own shards, so no host holds the whole model.
    The sketch on meta is only a shape: under DMP every rank gets its own shard of it."""
    token = _TABLE_DEVICE.set(torch.device(device))
    try:
        yield
    finally:
        _TABLE_DEVICE.reset(token)


def table_device(device: Optional[torch.device]) -> Optional[torch.device]:
    """Where a method builds its tables: ``tables_on``'s device, else its own ``device``."""
    return _TABLE_DEVICE.get() or device


def split_features(schema: FeatureSchema, small_field_rows: int) -> Tuple[List[SparseFeature], List[SparseFeature]]:
    """(kept full, compressed), each in schema order."""
    small = [f for f in schema.sparse if f.cardinality <= small_field_rows]
    big = [f for f in schema.sparse if f.cardinality > small_field_rows]
    return small, big


def full_config(f: SparseFeature, dim: int, name: str | None = None) -> EmbeddingBagConfig:
    return EmbeddingBagConfig(
        name=name or f"t_{f.name}",
        embedding_dim=dim,
        num_embeddings=f.cardinality,
        feature_names=[f.name],
        pooling=PoolingType.SUM,
    )


class CompressedEmbedding(nn.Module):
    """Base: feature bookkeeping and the KeyedTensor output. Subclasses implement
    ``embed(kjt) -> {feature: (B, dim) pooled tensor}``.

    ``fused``: when the collections are unsharded, methods with a fused op in
    ``compactrec.kernels`` (hash+scale, QR, mixed-dim) run it on the tables' weights (one
    pass: ids -> rows -> compose -> pool) instead of the collection lookups; set it False to
    force the collection path (tests compare the two)."""

    fused: bool = True

    def __init__(self, schema: FeatureSchema, dim: int) -> None:
        super().__init__()
        self.schema = schema
        self.dim = dim
        self.feature_names: List[str] = schema.sparse_names
        self._configs = [full_config(f, dim) for f in schema.sparse]

    def table_weight(self, name: str) -> torch.Tensor:
        """The weight of the stock (unsharded) table ``name``, in whichever collection holds it."""
        for m in self.children():
            if isinstance(m, EmbeddingBagCollection) and name in m.embedding_bags:
                return m.embedding_bags[name].weight
            if isinstance(m, EmbeddingCollection) and name in m.embeddings:
                return m.embeddings[name].weight
        raise KeyError(f"no table named {name}")

    def embedding_bag_configs(self) -> List[EmbeddingBagConfig]:
        """Virtual one-table-per-feature configs (names and width only; not the storage)."""
        return self._configs

    def reserved_rows(self) -> Dict[str, int]:
        """``reserve_unseen``: table name -> the row never-seen ids read (kept at 0,
        ``embeddings/reserved.py``). Empty for methods without reserved rows."""
        return {}

    def embed(self, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, features: KeyedJaggedTensor) -> KeyedTensor:
        """features: KJT with the schema's keys -> KeyedTensor, values (B, F * dim)."""
        pooled = self.embed(features)
        # fp32 out at every embedding.precision, as FBGEMM's lookups (output_dtype) under DMP;
        # the unsharded fused kernels return the tables' dtype. A no-op at fp32.
        values = torch.cat([pooled[name] for name in self.feature_names], dim=1).float()
        return KeyedTensor(
            keys=self.feature_names,
            length_per_key=[self.dim] * len(self.feature_names),
            values=values,
        )


def group_columns(kt: KeyedTensor, groups: List[List[str]]) -> List[torch.Tensor]:
    """The columns of each group of keys of a pooled KeyedTensor, the group's keys side by
    side: one (B, sum of its widths) tensor per group. Views from ONE split when every group
    is a run of consecutive keys in the KeyedTensor, in the group's order, and the runs tile
    it (in any order of the groups: DMP orders its output by sharding type, e.g. small full
    tables, then hash tables, then the row-wise hot table). Then the backward is one cat,
    where a slice per group would each allocate and add a zero-filled gradient of the whole
    (B, K * dim) output. Otherwise one split per key and a cat per group."""
    keys = kt.keys()
    widths = dict(zip(keys, kt.length_per_key()))
    at = {k: i for i, k in enumerate(keys)}
    nonempty = [(i, g) for i, g in enumerate(groups) if g]
    runs = sorted(nonempty, key=lambda ig: at.get(ig[1][0], -1))
    if [k for _, g in runs for k in g] == keys:  # (so every group key is in kt)
        parts = kt.values().split([sum(widths[k] for k in g) for _, g in runs], dim=1)
        out = [kt.values()[:, :0]] * len(groups)
        for (i, _), part in zip(runs, parts):
            out[i] = part
        return out
    cols = dict(zip(keys, kt.values().split(kt.length_per_key(), dim=1)))
    return [torch.cat([cols[k] for k in g], dim=1) if g else kt.values()[:, :0] for g in groups]


def is_local(*collections: nn.Module) -> bool:
    """True when the stock collections are the plain (unsharded) TorchRec modules, whose
    weights are ordinary parameters that the fused kernels (``compactrec.kernels``) can read.
    Under DMP they are replaced by sharded twins and the method runs through them instead."""
    plain = (EmbeddingBagCollection, EmbeddingCollection)
    return all(c is None or type(c) in plain for c in collections)


def kjt_from(parts: Dict[str, Tuple[torch.Tensor, torch.Tensor]]) -> KeyedJaggedTensor:
    """KJT from ``{key: (values, lengths)}`` (keys in dict order)."""
    keys = list(parts)
    if not keys:
        raise ValueError("no features")
    values = torch.cat([parts[k][0] for k in keys])
    lengths = torch.cat([parts[k][1].to(torch.int32) for k in keys])
    return KeyedJaggedTensor(keys=keys, values=values, lengths=lengths)


def one_hot_split(features: List[SparseFeature]) -> Tuple[List[str], List[str]]:
    """(one-hot, multi-hot) feature names, each in the given order, by the schema's flag."""
    return [f.name for f in features if not f.multi_hot], [f.name for f in features if f.multi_hot]


def embed_pooled_and_multi(module: nn.Module, features: KeyedJaggedTensor) -> Dict[str, torch.Tensor]:
    """The sharded step of a method with the one-hot fast path (QR, MEmCom): ``module``'s
    ``small`` and ``onehot`` features through ONE pooled lookup (``_embed_pooled(small,
    onehot)``), its ``multi`` ones composed before pooling (``_embed_multi(multi)``)
    -> {feature: (B, d)}."""
    small, onehot, multi = group_kjt(features, [module.small, module.onehot, module.multi])
    out: Dict[str, torch.Tensor] = {}
    if small is not None or onehot is not None:
        out.update(module._embed_pooled(small, onehot))
    if multi is not None:
        out.update(module._embed_multi(multi))
    return out


def check_one_hot(kjt: KeyedJaggedTensor) -> None:
    """Raise if a bag of ``kjt`` (features the schema says are one-hot) holds more than one
    id: the pooled fast path composes after pooling, which is exact only for bags of <= 1."""
    check_at_most_one(kjt.lengths(), kjt.keys())


def check_at_most_one(lengths: torch.Tensor, what: object) -> None:
    """Raise unless every bag length in ``lengths`` is <= 1. On CPU one max; elsewhere an
    async assert (no host sync)."""
    if lengths.numel() == 0:
        return
    if lengths.device.type != "cpu":
        torch._assert_async((lengths <= 1).all(), "a one-hot feature has a bag of several ids")
    elif int(lengths.max()) > 1:
        raise ValueError(f"{what}: one-hot in the schema (multi_hot false) but a bag holds several ids; "
                         "mark the feature multi_hot in the manifest")


def per_bag(values: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """For bags of at most one value: each bag's value, 0 for an empty bag: (num_bags,)."""
    if values.numel() == lengths.numel():
        return values  # every bag holds its one value
    return values.new_zeros(lengths.numel()).index_copy_(0, bag_ids(lengths), values)


def group_kjt(features: KeyedJaggedTensor, groups: List[List[str]]) -> List[Optional[KeyedJaggedTensor]]:
    """``features`` regrouped by key: one KJT per group (keys in the given order), None for an
    empty group; one permute of the batch (none when already in order), then slices."""
    index = {k: i for i, k in enumerate(features.keys())}
    order = [index[k] for g in groups for k in g]
    regrouped = features if order == list(range(len(index))) else features.permute(order)
    sizes = [len(g) for g in groups if g]
    parts = iter([regrouped] if len(sizes) == 1 else regrouped.split(sizes))
    return [next(parts) if g else None for g in groups]


def split_kjt(features: KeyedJaggedTensor, first: List[str], second: List[str]) -> Tuple[
    Optional[KeyedJaggedTensor], Optional[KeyedJaggedTensor]
]:
    """``features`` regrouped by key: (KJT of ``first``, KJT of ``second``), keys in the given
    order, None for an empty list. One permute of the whole batch (none when the keys are
    already in that order) and two slices, instead of one JaggedTensor per feature: a
    method then transforms all its compressed ids with one op each (with the per-feature
    loops gone, MEmCom's and mixed-dim's steps at batch 128 took 0.81-0.87x their time,
    ``benchmarks/speed_ab.py``)."""
    index = {k: i for i, k in enumerate(features.keys())}
    order = [index[k] for k in first + second]
    regrouped = features if order == list(range(len(index))) else features.permute(order)
    if not first or not second:
        return (regrouped, None) if first else (None, regrouped)
    head, tail = regrouped.split([len(first), len(second)])
    return head, tail


def value_keys(kjt: KeyedJaggedTensor) -> torch.Tensor:
    """For each value of ``kjt``, the index of its key: (nnz,) int64 (from the host's
    length_per_key, which the KJT computes once and caches)."""
    per_key = torch.tensor(kjt.length_per_key(), device=kjt.values().device)
    return torch.repeat_interleave(
        torch.arange(per_key.numel(), device=per_key.device), per_key, output_size=kjt.values().numel()
    )


def join_rows(parts: List[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(parts)`` of per-feature looked-up rows (nnz_f, d), without the copy when
    they are the consecutive pieces of one tensor: TorchRec's unpooled collections split one
    lookup output per feature (``construct_jagged_tensors``), so joining the features again
    is a view of that output, and its gradient skips the split's backward cat (an (nnz, d)
    copy each way). Anything else: a cat."""
    base = parts[0]._base if parts else None
    if base is None or len(parts) == 1 or base.dim() != 2 or not base.is_contiguous():
        return parts[0] if len(parts) == 1 else torch.cat(parts)
    width, start = base.shape[1], parts[0].storage_offset() - base.storage_offset()
    at = start
    for p in parts:
        if p._base is not base or p.dim() != 2 or p.shape[1] != width or not p.is_contiguous() or (
            p.storage_offset() - base.storage_offset() != at
        ):
            return torch.cat(parts)
        at += p.numel()
    if start % width:
        return torch.cat(parts)
    if start == 0 and at == base.numel():
        return base  # the whole output: no slice node (its backward would copy into a zeroed tensor)
    return base.narrow(0, start // width, (at - start) // width)


def bag_ids(lengths: torch.Tensor) -> torch.Tensor:
    """For each value of a jagged tensor, the index of its bag: (nnz,) int64."""
    return torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths.long())


def sum_pool(per_id: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Sum of per-id rows over each bag: per_id (nnz, d), lengths (B,) -> (B, d).

    Empty bags give zeros. This is the compose-before-pool path of QR and MEmCom.
    """
    if per_id.shape[0] == lengths.numel() and bool((lengths == 1).all()):
        return per_id  # one-hot: every bag is its one id, already in bag order
    out = per_id.new_zeros((lengths.numel(), per_id.shape[1]))
    if per_id.shape[0] == 0:
        return out
    return out.index_add_(0, bag_ids(lengths), per_id)


def route(
    values: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor, num_targets: int
) -> Tuple[List[torch.Tensor], List[torch.Tensor]]:
    """Split one jagged feature into ``num_targets`` jagged features.

    ``target[j]`` is the output (0..num_targets-1) of value j; each output keeps the bag
    structure (B bags, possibly empty) and the original order inside a bag.
    Returns per output: values (nnz_k,), lengths (B,).
    """
    b = lengths.numel()
    bags = bag_ids(lengths)
    order = torch.sort(target, stable=True).indices
    counts = torch.bincount(target * b + bags, minlength=num_targets * b).view(num_targets, b)
    per_target = torch.bincount(target, minlength=num_targets).tolist()
    vals = torch.split(values[order], per_target)
    return list(vals), list(counts.unbind(0))
