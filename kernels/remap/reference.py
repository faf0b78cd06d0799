"""hash_remap in plain PyTorch: ``compactrec.hashing.hash_mod`` per value, 0 meaning "keep the id".

values (nnz,) int32/int64 ids; moduli an int, or an (nnz,) int tensor (one modulus per value:
e.g. each feature's or each CAFE hash level's table size, laid out like the KJT values).
out_j = hash_mod(id_j, m_j, seed) (splitmix64, top bit dropped, modulo m_j) where m_j > 0,
and out_j = id_j (as int64) where m_j == 0. int64 out; no gradient.
"""

from __future__ import annotations

from typing import Union

import torch

from compactrec.hashing import hash_mod

Moduli = Union[int, torch.Tensor]


def check_inputs(values: torch.Tensor, moduli: Moduli) -> None:
    if values.dim() != 1 or values.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"hash_remap: values must be a 1-D int32/int64 tensor, got {values.dtype} "
                         f"{tuple(values.shape)}")
    if torch.is_tensor(moduli):
        if moduli.shape != values.shape or moduli.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"hash_remap: moduli must be an int or an int32/int64 tensor shaped like values "
                             f"{tuple(values.shape)}, got {moduli.dtype} {tuple(moduli.shape)}")
        if not moduli.is_cuda and moduli.numel() and bool((moduli < 0).any()):  # on CUDA it would sync
            raise ValueError("hash_remap: moduli must be >= 0 (0 keeps the id)")
    elif isinstance(moduli, bool) or not isinstance(moduli, int) or moduli < 0:
        raise ValueError(f"hash_remap: moduli must be an int >= 0 or a tensor, got {moduli!r}")


def hash_remap(values: torch.Tensor, moduli: Moduli, *, seed: int) -> torch.Tensor:
    """values (nnz,) int ids, moduli int or (nnz,) -> (nnz,) int64."""
    check_inputs(values, moduli)
    ids = values.to(torch.int64)
    if not torch.is_tensor(moduli):
        return hash_mod(ids, moduli, seed) if moduli > 0 else values.to(torch.int64, copy=True)
    m = moduli.to(torch.int64)
    keep = m == 0
    return torch.where(keep, ids, hash_mod(ids, m.masked_fill(keep, 1), seed))
