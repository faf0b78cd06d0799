"""Optimizers: a fused sparse optimizer for the tables, a torch optimizer for the rest.

The sparse optimizer is attached to the embedding parameters *before* sharding
(``apply_optimizer_in_backward``): TorchRec maps it onto FBGEMM's fused kernels, which
update rows during backward, so table gradients never materialize. Unsharded (a reference
model in tests) the same class runs as a per-parameter torch optimizer in backward.
Rowwise Adagrad for the tables and Adagrad for the dense part are the DLRM defaults
(docs/methods.md: plain SGD leaves every method at chance on real data).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Type

import torch
from torch import nn
from torch.distributed.optim import _apply_optimizer_in_backward
from torchrec.optim import RowWiseAdagrad
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

from compactrec.trainer.config import OptimConfig

_SPARSE: Dict[str, Type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}


def embedding_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Parameters of every stock TorchRec embedding module in ``model`` (the sharded ones)."""
    params: List[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, (EmbeddingBagCollection, EmbeddingCollection)):
            params += list(m.parameters())
    return params


def _sparse_kwargs(cfg: OptimConfig) -> Dict[str, float]:
    kwargs: Dict[str, float] = {"lr": cfg.sparse_lr}
    if cfg.sparse != "sgd":
        kwargs["eps"] = cfg.eps
    return kwargs


def apply_sparse_optimizer(model: nn.Module, cfg: OptimConfig) -> None:
    """Attach the fused sparse optimizer to the embedding tables of ``model`` (in place)."""
    params = embedding_parameters(model)
    if params:
        _apply_optimizer_in_backward(_SPARSE[cfg.sparse], params, _sparse_kwargs(cfg))


def dense_optimizer(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.Optimizer:
    """``foreach=True``: one multi-tensor op per update step instead of a Python loop over
    parameters (torch picks it by itself only on CUDA); mixed-dim's many small projections
    made the per-parameter loop a visible share of a CPU step. Same arithmetic per element."""
    if cfg.dense == "adagrad":
        return torch.optim.Adagrad(params, lr=cfg.dense_lr, eps=cfg.eps, foreach=True)
    if cfg.dense == "adam":
        return torch.optim.Adam(params, lr=cfg.dense_lr, eps=cfg.eps, foreach=True)
    return torch.optim.SGD(params, lr=cfg.dense_lr, foreach=True)


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> KeyedOptimizer:
    """Dense optimizer over every parameter without an in-backward optimizer, combined with
    the fused optimizer of a sharded model (``model.fused_optimizer``) when there is one."""
    dense = dict(in_backward_optimizer_filter(model.named_parameters()))
    opts: List[KeyedOptimizer] = []
    if dense:
        opts.append(KeyedOptimizerWrapper(dense, lambda ps: dense_optimizer(ps, cfg)))
    fused = getattr(model, "fused_optimizer", None)
    if fused is not None:
        opts.append(fused)
    return CombinedOptimizer(opts)
