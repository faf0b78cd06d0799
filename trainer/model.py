"""DLRM / DCNv2 with an injected embedding module (TorchRec's own model classes).

The embedding module only has to look like an ``EmbeddingBagCollection`` to TorchRec's
``SparseArch``: ``forward(KeyedJaggedTensor) -> KeyedTensor`` and ``embedding_bag_configs()``
(one entry per feature, all of the same width).

Example::

    model = build_model(cfg.model, build_embeddings(...), num_dense=13)
    loss, (loss_, logits, labels) = model(batch)   # logits (B,)
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
from torch import nn
from torchrec.models.dlrm import DLRM, DLRM_DCN, DLRMTrain

from compactrec.trainer.config import ModelConfig
from compactrec.trainer.interaction import DotInteraction
from compactrec.trainer.sparse_arch import KeyedSparseArch


def build_model(
    cfg: ModelConfig, embeddings: nn.Module, num_dense: int, device: Optional[torch.device] = None
) -> DLRMTrain:
    """A ``DLRMTrain`` (BCE-with-logits loss around the DLRM) over ``embeddings``.

    ``num_dense`` may be 0 (e.g. MovieLens): the DenseArch's first layer is then
    ``Linear(0, n)``, whose output is its bias (initialised to 0; ReLU keeps it at 0), so the
    dense vector is a constant zero that adds nothing; torch's warning that it cannot
    initialise the empty weight is expected and silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return DLRMTrain(_build_dlrm(cfg, embeddings, num_dense, device))


def _build_dlrm(cfg: ModelConfig, embeddings: nn.Module, num_dense: int, device: Optional[torch.device]) -> nn.Module:
    if cfg.arch == "dlrm":
        dlrm = DLRM(
            embedding_bag_collection=embeddings,  # type: ignore[arg-type]
            dense_in_features=num_dense,
            dense_arch_layer_sizes=list(cfg.dense_arch),
            over_arch_layer_sizes=list(cfg.over_arch),
            dense_device=device,
        )
        # the same interaction with a cheaper backward (trainer/interaction.py)
        old = dlrm.inter_arch
        dlrm.inter_arch = DotInteraction(old.F, device=old.triu_indices.device)
    else:
        dlrm = DLRM_DCN(
            embedding_bag_collection=embeddings,  # type: ignore[arg-type]
            dense_in_features=num_dense,
            dense_arch_layer_sizes=list(cfg.dense_arch),
            over_arch_layer_sizes=list(cfg.over_arch),
            dcn_num_layers=cfg.dcn_num_layers,
            dcn_low_rank_dim=cfg.dcn_low_rank_dim,
            dense_device=device,
        )
    # the same (B, F, D), as a view of the pooled KeyedTensor (trainer/sparse_arch.py)
    dlrm.sparse_arch = KeyedSparseArch(dlrm.sparse_arch.embedding_bag_collection)
    return dlrm


def embedding_module(model: nn.Module) -> nn.Module:
    """The injected embedding module of a (possibly wrapped) ``DLRMTrain``."""
    return unwrap(model).model.sparse_arch.embedding_bag_collection  # type: ignore[union-attr]


def unwrap(model: nn.Module) -> nn.Module:
    """The user module inside DMP / DDP wrappers (each keeps it as ``.module``)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module  # type: ignore[assignment]
    return model
