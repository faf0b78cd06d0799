"""Move full (unsharded) weights into a sharded model's local shards.

TorchRec re-initializes tables when it shards them, so a sharded model and an unsharded
reference start from different weights. ``load_full_state_dict`` copies each rank's slice of
the reference's full tensors into its ``ShardedTensor`` / ``DTensor`` shards; plain tensors
(dense parameters, buffers) are copied whole. Used by the parity tests and by tools that
start a sharded run from an unsharded state.
"""

from __future__ import annotations

from typing import Dict, Mapping

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor


def _slice(full: torch.Tensor, offsets, sizes) -> torch.Tensor:
    index = tuple(slice(o, o + s) for o, s in zip(offsets, sizes))
    return full[index]


@torch.no_grad()
def load_full_state_dict(model: nn.Module, full: Mapping[str, torch.Tensor]) -> None:
    """Copy ``full`` (unsharded state dict, same keys) into ``model``'s tensors in place."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    own = model.state_dict()
    missing = sorted(set(own) - set(full))
    if missing:
        raise KeyError(f"full state dict lacks {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    for key, target in own.items():
        src = full[key]
        if tuple(src.shape) != tuple(target.shape):
            raise ValueError(f"{key}: full shape {tuple(src.shape)} != model shape {tuple(target.shape)}")
        if isinstance(target, ShardedTensor):
            for shard in target.local_shards():
                md = shard.metadata
                shard.tensor.copy_(_slice(src, md.shard_offsets, md.shard_sizes))
        elif isinstance(target, DTensor):
            sizes, offsets = compute_local_shape_and_global_offset(
                target.shape, target.device_mesh, target.placements
            )
            target.to_local().copy_(_slice(src, offsets, sizes))
        else:
            target.copy_(src)


def local_shards(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every state tensor's local part (a copy), keyed like ``state_dict``; shards are
    concatenated along rows (for before/after comparisons)."""
    out: Dict[str, torch.Tensor] = {}
    for key, t in model.state_dict().items():
        if isinstance(t, ShardedTensor):
            parts = [s.tensor.detach().clone().reshape(-1) for s in t.local_shards()]
            out[key] = torch.cat(parts) if parts else torch.empty(0)
        elif isinstance(t, DTensor):
            out[key] = t.to_local().detach().clone().reshape(-1)
        else:
            out[key] = t.detach().clone()
    return out
