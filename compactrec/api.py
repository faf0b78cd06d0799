"""CompactRec for TorchRec users: a compressed embedding module for your own model.

Give it the ``EmbeddingBagConfig``s your model would hand to an ``EmbeddingBagCollection``
and a method; it returns a module with the same contract (``KeyedJaggedTensor`` in,
``KeyedTensor`` of pooled ``(B, dim)`` per feature out, ``embedding_bag_configs()``), so
``DLRM``, ``DLRM_DCN`` or your own ``SparseArch`` take it unchanged. Inside it are stock
TorchRec collections: ``DistributedModelParallel`` shards them with ``sharders()``. No
CompactRec config types are needed; the method's own knobs go in ``options`` (the keys of
``embedding.<method>`` in trainer/config.py, e.g. ``{"threshold": 10}`` for CAFE).

    emb = compressed_embedding(tables, "memcom", ratio=8)            # 8x fewer bytes
    model = DLRM(embedding_bag_collection=emb, dense_in_features=13, ...)
    apply_optimizer_in_backward(RowWiseAdagrad, table_parameters(emb), {"lr": 0.05})
    model = DistributedModelParallel(model, device=device, sharders=sharders(), plan=sharding_plan(model))
    finish_sharding(model)                                          # CAFE: split its sketch over ranks

examples/torchrec_model.py is the whole loop, run by tests/unit/test_api.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

if TYPE_CHECKING:  # torch / TorchRec are imported when a function runs
    import numpy as np
    import torch
    from torch import nn
    from torchrec.distributed.types import ModuleSharder, ShardingPlan
    from torchrec.modules.embedding_configs import EmbeddingBagConfig

METHODS = ("full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe")


def compressed_embedding(
    tables: Sequence["EmbeddingBagConfig"],
    method: str,
    ratio: Optional[float] = None,
    budget_bytes: Optional[int] = None,
    id_counts: Optional[Mapping[str, "np.ndarray"]] = None,
    options: Optional[Mapping[str, Any]] = None,
    small_field_rows: int = 200,
    device: Optional["torch.device"] = None,
) -> "nn.Module":
    """The ``method``'s embedding module over ``tables`` (one feature per table, one width).

    Args:
        tables: TorchRec table configs; every table has one feature, sum pooling, the same
            ``embedding_dim`` and the same ``data_type`` (FP32, FP16, or BF16 on CUDA): the
            method's tables are stored at that type, within the same bytes
            (``embedding.precision``, docs/methods.md).
        method: one of ``METHODS``; ``full`` returns a plain ``EmbeddingBagCollection``.
        ratio / budget_bytes: the target size, as a ratio over the full tables or in bytes.
        id_counts: feature -> occurrences of each id, shape ``(num_embeddings,)``; mixed_dim
            (row blocks by frequency) needs them.
        options: the method's own settings (``embedding.<method>.*``), e.g. ``{"levels": 2}``.
        small_field_rows: tables of at most this many rows stay full.

    Raises:
        ValueError: shared or mixed-width tables, an unknown method or option, or a size the
            method cannot reach (``BudgetError``, naming its reachable maximum).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException
    from torchrec.modules.embedding_configs import PoolingType
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from compactrec.embeddings.factory import build_embeddings
    from compactrec.trainer.config import CompressionConfig, EmbeddingConfig

    if method not in METHODS:
        raise ValueError(f"method {method!r}: expected one of {list(METHODS)}")
    schema, dim = _schema(tables)
    if any(t.pooling != PoolingType.SUM for t in tables):
        raise ValueError("CompactRec methods pool by sum: set pooling=PoolingType.SUM on every table")
    precision = _precision(tables)
    if method == "full":
        from compactrec.embeddings.precision import set_table_precision

        return set_table_precision(EmbeddingBagCollection(tables=list(tables), device=device), precision)
    try:
        node = OmegaConf.merge(
            OmegaConf.structured(EmbeddingConfig),
            {"kind": method, "small_field_rows": small_field_rows, "precision": precision,
             **({method: dict(options)} if options else {})},
        )
    except OmegaConfBaseException as e:
        raise ValueError(f"options for {method}: {str(e).splitlines()[0]}") from None
    cfg: EmbeddingConfig = OmegaConf.to_object(node)  # type: ignore[assignment]
    counts = None
    if id_counts is not None:
        counts = lambda: {k: _as_counts(v) for k, v in id_counts.items()}  # noqa: E731
    return build_embeddings(cfg, CompressionConfig(ratio=ratio, bytes=budget_bytes), schema, dim, device, counts=counts)


def sharders() -> List["ModuleSharder"]:
    """The sharders to give ``DistributedModelParallel``: TorchRec's EBC / EC sharders that
    offer every model-parallel type on CPU too and never data_parallel (which silently
    freezes a table on CPU; docs/stack.md)."""
    from compactrec.sharding.planner import default_sharders

    return default_sharders()


def sharding_plan(
    model: "nn.Module",
    types: Sequence[str] = ("table_wise", "row_wise"),
    device_type: Optional[str] = None,
    hbm_gb: Optional[float] = None,
) -> "ShardingPlan":
    """TorchRec's planner over ``model`` with CompactRec's constraints (fused kernels, the
    sharding ``types`` each table's module supports, CAFE's hot table whole per row) and
    storage estimates that count what each method keeps per row. Collective when a process
    group is up (every rank gets the same plan)."""
    import torch.distributed as dist

    from compactrec.sharding.planner import plan_model

    world = dist.get_world_size() if dist.is_initialized() else 1
    device_type = device_type or ("cuda" if _on_cuda(model) else "cpu")
    hbm = int(hbm_gb * 1024**3) if hbm_gb else None
    return plan_model(model, world, device_type, list(types), {}, sharders(), hbm_bytes=hbm)


def finish_sharding(model: "nn.Module") -> None:
    """After ``DistributedModelParallel``: give each CAFE module a sketch shard beside its
    hot rows (a no-op for the other methods), and set ``reserve_unseen``'s reserved rows to 0
    (DMP initialised them with their tables). Collective."""
    from compactrec.sharding.shard import finish_sharding as _finish

    _finish(model)


def table_parameters(module: "nn.Module") -> List["torch.nn.Parameter"]:
    """The parameters of the stock TorchRec tables inside ``module``: the ones to give a
    fused optimizer (``apply_optimizer_in_backward``) before sharding. The rest (MDE's
    projections, say) belong with your dense optimizer."""
    from compactrec.trainer.optim import embedding_parameters

    return embedding_parameters(module)


def size_report(module: "nn.Module", tables: Sequence["EmbeddingBagConfig"]) -> Dict[str, float]:
    """``embedding_bytes`` (every parameter and persistent buffer the module keeps),
    ``full_embedding_bytes`` (fp32 tables of ``tables``) and ``compression_ratio``."""
    from compactrec.embeddings.accounting import embedding_report

    schema, dim = _schema(tables)
    return embedding_report(module, schema, dim)


def _schema(tables: Sequence["EmbeddingBagConfig"]):
    from compactrec.data.reader.manifest import FeatureSchema, SparseFeature

    if not tables:
        raise ValueError("no tables")
    shared = [t.name for t in tables if len(t.feature_names) != 1]
    if shared:
        raise ValueError(f"tables {shared}: one feature per table (a table shared by features is not supported)")
    dims = sorted({t.embedding_dim for t in tables})
    if len(dims) != 1:
        raise ValueError(f"tables have widths {dims}: CompactRec methods give every feature one width")
    sparse = tuple(SparseFeature(t.feature_names[0], t.num_embeddings, multi_hot=True) for t in tables)
    return FeatureSchema(label="label", dense=(), sparse=sparse), dims[0]


def _precision(tables: Sequence["EmbeddingBagConfig"]) -> str:
    """The tables' one ``data_type`` as an ``embedding.precision`` name."""
    from compactrec.embeddings.precision import PRECISIONS

    by_type = {data_type: name for name, (_, data_type) in PRECISIONS.items()}
    types = {t.data_type for t in tables}
    if len(types) != 1 or next(iter(types)) not in by_type:
        raise ValueError(f"tables have data types {sorted(str(t) for t in types)}: give every table one of "
                         f"{', '.join(str(t) for t in by_type)}")
    return by_type[types.pop()]


def _as_counts(v: Any) -> "np.ndarray":
    import numpy as np

    return np.asarray(v.cpu() if hasattr(v, "cpu") else v, dtype=np.int64)


def _on_cuda(model: "nn.Module") -> bool:
    return any(p.is_cuda for p in model.parameters())
