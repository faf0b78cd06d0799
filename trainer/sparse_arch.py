"""DLRM's sparse arch without its two copies: TorchRec's ``SparseArch`` returning a view.

TorchRec's ``SparseArch`` turns the embedding collection's ``KeyedTensor`` (values (B, F * D),
one D-wide column block per feature) into (B, F, D) by splitting it into a dict of F tensors
(``to_dict``) and concatenating them again in feature order: a copy of every pooled embedding
forward, and in backward the split's gradient is another concatenation. When the keys already
come in the arch's feature order, each D wide (what TorchRec's collections, sharded or not, and
every CompactRec embedding return), that round trip is the identity, and the values viewed as
(B, F, D) are the same tensor: bit-identical output and gradients, two (B, F * D) copies fewer
per step (~7 MB each at B=2048, F=26, D=32). Any other layout takes TorchRec's path. The
choice is a ``torch.fx.wrap``ped function, so TorchRec's ``TrainPipelineSparseDist`` still
traces the model.
"""

from __future__ import annotations

from typing import List

import torch
from torchrec.models.dlrm import SparseArch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor


def pooled_features(kt: KeyedTensor, names: List[str], f: int, d: int) -> torch.Tensor:
    """(B, f, d) from ``kt``: a view of its values when its keys are ``names`` in order, each d
    wide (one contiguous 2-D block); else TorchRec's split into a dict + ``cat`` in order."""
    values = kt.values()
    if (kt.key_dim() == 1 and values.dim() == 2 and values.is_contiguous() and kt.keys() == names
            and all(n == d for n in kt.length_per_key())):
        return values.view(-1, f, d)
    sparse = kt.to_dict()
    return torch.cat([sparse[name] for name in names], dim=1).reshape(-1, f, d)


# A leaf for torch.fx: TorchRec's train pipeline traces the model to find the KJTs that feed
# sharded modules, and the key check above is Python control flow, which a trace cannot take.
torch.fx.wrap("pooled_features")


class KeyedSparseArch(SparseArch):
    """``SparseArch(embedding_bag_collection)``: features (KJT) -> (B, F, D)."""

    def forward(self, features: KeyedJaggedTensor) -> torch.Tensor:
        return pooled_features(self.embedding_bag_collection(features), self._sparse_feature_names, self.F, self.D)
