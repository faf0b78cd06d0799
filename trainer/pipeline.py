"""How the train loop runs one optimizer step, and TorchRec's train pipeline where it applies.

``train_step`` is the loop's step (``trainer/loop.py`` calls it once per batch, and
``benchmarks/bare_torchrec.py`` times exactly it against a bare TorchRec loop): zero_grad,
forward, backward, step, nothing else. No host sync: the loss stays a device tensor (the
loop sums it on the device and reads it once per ``trainer.log_every`` steps).

``sparse_dist_pipeline`` builds TorchRec's ``TrainPipelineSparseDist``, which starts the
next batch's input distribution (the KJT all-to-all) before the current batch's forward, and
on CUDA copies batches to the device on a side stream. Measured on CPU with gloo (one rank,
``benchmarks/bare_torchrec.py --pipeline``): it runs and trains every parameter, but a CPU has
no streams to overlap on, so it only reorders the same work. The pipeline traces the model
with torch.fx to find the KJTs that feed sharded modules; a compressed method computes its
lookups' KJTs inside its own forward (hashing, routing, the sketch), which fx cannot trace
(``Proxy object cannot be iterated``), so only the full table (a stock EBC fed straight
from the batch) can be pipelined. The loop does not use it: its cursor (checkpoints resume
from the batches *trained*) would also have to discount the batch the pipeline holds ahead.

Example::

    loss = train_step(engine, batch, env.device)        # (), on the device
    pipe = sparse_dist_pipeline(model, optimizer, env.device)   # None: cannot pipeline
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from compactrec.data.reader.batch import Batch
from compactrec.trainer.dense_engine import DenseEngine
from compactrec.trainer.model import embedding_module


def train_step(engine: DenseEngine, batch: Batch, device: torch.device) -> torch.Tensor:
    """One optimizer step on ``batch``; returns the batch's mean loss, () on ``device``."""
    # zero_grad before the forward: it hands the tables' fused optimizer its lr (a schedule's),
    # which FBGEMM's lookup takes in the forward for the update inside backward
    engine.zero_grad()
    loss, _ = engine.forward(batch.to(device))
    engine.backward(loss)
    engine.step()
    return loss


def can_pipeline(model: nn.Module) -> bool:
    """True when TorchRec's pipeline can trace ``model`` (a sharded DLRMTrain): its embedding
    module is a stock EmbeddingBagCollection fed straight from the batch (after DMP: its
    sharded twin), not a compressed method that builds its lookups' inputs itself."""
    from compactrec.embeddings.base import CompressedEmbedding

    emb = embedding_module(model)
    return not isinstance(emb, CompressedEmbedding) and (
        isinstance(emb, EmbeddingBagCollection) or "ShardedEmbeddingBagCollection" in type(emb).__name__
    )


def sparse_dist_pipeline(model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device):
    """``TrainPipelineSparseDist(model, optimizer, device)`` when ``can_pipeline(model)``,
    else None. ``pipe.progress(iterator)`` then runs one step and returns (loss, output)."""
    if not can_pipeline(model):
        return None
    from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

    return TrainPipelineSparseDist(model, optimizer, device)
