"""splitmix64: the 64-bit integer mixer used for every hash in CompactRec.

One definition with two front ends, numpy (data generation) and torch (id remapping in the
embedding modules; the Triton kernels implement the same function). Arithmetic wraps
modulo 2^64; torch has no uint64 arithmetic, so the torch version works on int64 bit
patterns and emulates logical right shifts with a mask.

Example::

    rows = hash_mod(ids, 1000, seed=3)     # (N,) int64 in [0, 1000)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: data-conversion workers use only the numpy side
    import torch

GOLDEN = 0x9E3779B97F4A7C15
M1 = 0xBF58476D1CE4E5B9
M2 = 0x94D049BB133111EB
_MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


def _shr(x: "torch.Tensor", k: int) -> "torch.Tensor":
    """Logical right shift of int64 bit patterns."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def splitmix64(x: "torch.Tensor", seed: int = 0) -> "torch.Tensor":
    """splitmix64 finalizer of ``x + seed * GOLDEN`` (int64 in, int64 bit patterns out)."""
    import torch

    x = x.to(torch.int64) + _signed(GOLDEN * (seed + 1))
    x = (x ^ _shr(x, 30)) * _signed(M1)
    x = (x ^ _shr(x, 27)) * _signed(M2)
    return x ^ _shr(x, 31)


def hash_mod(ids: "torch.Tensor", m: int, seed: int = 0) -> "torch.Tensor":
    """Hash ids into ``[0, m)``: splitmix64, top bit dropped, then modulo."""
    return (splitmix64(ids, seed) & 0x7FFFFFFFFFFFFFFF) % m


def splitmix64_np(x: np.ndarray, seed: int = 0) -> np.ndarray:
    """The same function on numpy uint64 (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    x += np.uint64((GOLDEN * (seed + 1)) & _MASK64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(M1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(M2)
    return x ^ (x >> np.uint64(31))
