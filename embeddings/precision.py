"""``embedding.precision``: the storage type of every stock TorchRec table of a method.

``fp32`` (default), ``fp16`` or ``bf16``. The tables (full rows, hashed rows, QR's quotient
and remainder tables, MEmCom's shared rows and per-entity scales, mixed-dim's blocks, CAFE's
hot and hash tables, ROBE's array) are what DMP shards and FBGEMM looks up; at fp16 they
take 2 bytes per value. FBGEMM's lookups return fp32 (its ``output_dtype``), so everything
after the lookup (composition, projection, the dense part) stays fp32. Mixed-dim's
projections are dense parameters and stay fp32; CAFE's sketch and the id maps are integers.

Where FBGEMM trains each precision (docs/methods.md, "Precision"):
* fp32, fp16: CPU and CUDA, pooled (EBC) and unpooled (EC) tables.
* bf16: CUDA only. FBGEMM has no CPU kernels for it ("split_embedding_cpu_forward not
  implemented for BFloat16"), so a CPU run stops before building (``check_precision``).
The sparse optimizer's state stays fp32 at every precision (FBGEMM's momentum1: one value
per row for rowwise Adagrad, one per value for Adagrad): ``sparse_optimizer_state_bytes``.

Budgets stay exact: ``compression`` is against the fp32 full tables, and the factory solves
for the largest fp32 budget of the method's planner whose build *at this precision* fits
(``module_bytes`` counts each tensor's real element size), so fp16 buys about twice the rows,
i.e. fewer collisions at the same bytes.
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Tuple, Union

import torch
from torch import nn
from torchrec.modules.embedding_configs import DataType, EmbeddingBagConfig, EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection, EmbeddingCollection

PRECISIONS: Dict[str, Tuple[torch.dtype, DataType]] = {
    "fp32": (torch.float32, DataType.FP32),
    "fp16": (torch.float16, DataType.FP16),
    "bf16": (torch.bfloat16, DataType.BF16),
}
# Sparse optimizer state per table, in fp32 values: (per row, per stored value)
OPTIMIZER_STATE: Dict[str, Tuple[int, int]] = {"rowwise_adagrad": (1, 0), "adagrad": (0, 1), "sgd": (0, 0)}
STATE_BYTES = 4  # FBGEMM keeps momentum1 in fp32 whatever the weights' precision (probed on CPU)

Collection = Union[EmbeddingBagCollection, EmbeddingCollection]


def element_size(precision: str) -> int:
    return torch.tensor([], dtype=PRECISIONS[precision][0]).element_size()


def check_precision(precision: str, device: torch.device) -> None:
    """``precision`` is known and FBGEMM trains it on ``device`` (bf16 has no CPU kernels)."""
    if precision not in PRECISIONS:
        raise ValueError(f"embedding.precision={precision!r}: must be one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device.type != "cuda":
        raise ValueError(
            f"embedding.precision=bf16 on {device.type}: FBGEMM has no CPU kernels for bf16 tables "
            "(split_embedding_cpu_forward not implemented for BFloat16); use embedding.precision=fp16 on CPU, "
            "bf16 on CUDA"
        )


def collections(module: nn.Module) -> Iterator[Tuple[Collection, List[Union[EmbeddingBagConfig, EmbeddingConfig]], nn.ModuleDict]]:
    """Every stock (unsharded) TorchRec collection under ``module``: (collection, its table
    configs, its name -> table modules)."""
    for m in module.modules():
        if isinstance(m, EmbeddingBagCollection):
            yield m, m.embedding_bag_configs(), m.embedding_bags
        elif isinstance(m, EmbeddingCollection):
            yield m, m.embedding_configs(), m.embeddings


def set_table_precision(module: nn.Module, precision: str) -> nn.Module:
    """Store every table under ``module`` at ``precision`` (in place; returns ``module``).

    Both halves matter: the config's ``data_type`` is what DMP's sharders read (FBGEMM's
    ``weights_precision``), the weight's dtype is what the unsharded collection (and
    ``module_bytes``) sees. TorchRec's own constructor maps every non-fp32 type to fp16, so
    the weights are cast here, values kept (a build on meta casts shapes only).
    """
    dtype, data_type = PRECISIONS[precision]
    for _, configs, tables in collections(module):
        for c in configs:
            c.data_type = data_type
        for t in tables.values():
            if t.weight.dtype != dtype:
                t.weight = nn.Parameter(t.weight.detach().to(dtype), requires_grad=t.weight.requires_grad)
    return module


def sparse_optimizer_state_bytes(module: nn.Module, sparse_optimizer: str) -> int:
    """Bytes of the fused sparse optimizer's state for every table under ``module`` (fp32)."""
    per_row, per_value = OPTIMIZER_STATE[sparse_optimizer]
    total = 0
    for _, configs, _ in collections(module):
        for c in configs:
            total += c.num_embeddings * (per_row + per_value * c.embedding_dim) * STATE_BYTES
    return total
