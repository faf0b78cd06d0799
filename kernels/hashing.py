"""splitmix64 + hash_mod in Triton, bit for bit the function in ``compactrec.hashing``.

``hash_mod`` is a ``@triton.jit`` helper the op kernels inline; ``hash_rows`` launches it on
its own (the backward needs the rows to sort, and the tests check it against the torch
version). Triton has native uint64 arithmetic, so shifts are logical and products wrap
modulo 2^64 without the masks the torch version needs. Ids are sign-extended to int64 first,
exactly as ``torch.Tensor.to(torch.int64)`` does, then reinterpreted as uint64.

Cost: 3 xor-shifts, 2 64-bit multiplies and one 64-bit modulo per id, all in registers;
memory traffic is the id read (4 or 8 bytes) and, for ``hash_rows``, an 8-byte row write.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compactrec.hashing import GOLDEN, _signed
from compactrec.kernels._common import new_output

# Triton reads TRITON_INTERPRET when a function is decorated: record what this import saw.
INTERPRETED = bool(triton.knobs.runtime.interpret)


def seed_offset(seed: int) -> int:
    """The additive constant ``GOLDEN * (seed + 1)`` as a signed int64 kernel argument."""
    return _signed(GOLDEN * (seed + 1))


@triton.jit
def hash_mod(ids, m, seed_add):
    """ids (any int tensor) -> int64 rows in [0, m); seed_add from ``seed_offset``."""
    x = ids.to(tl.int64).to(tl.uint64, bitcast=True) + seed_add.to(tl.int64).to(tl.uint64, bitcast=True)
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9
    x = (x ^ (x >> 27)) * 0x94D049BB133111EB
    x = x ^ (x >> 31)
    # Top bit dropped: the value fits int64, so a signed modulo is exact.
    return (x & 0x7FFFFFFFFFFFFFFF).to(tl.int64, bitcast=True) % m


@triton.jit(do_not_specialize=["seed_add"])
def _hash_rows_kernel(ids_ptr, out_ptr, n, m, seed_add, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ids = tl.load(ids_ptr + offs, mask=mask, other=0)
    tl.store(out_ptr + offs, hash_mod(ids, m, seed_add), mask=mask)


def hash_rows(ids: torch.Tensor, m: int, seed: int = 0) -> torch.Tensor:
    """ids (N,) int32/int64 -> (N,) int64 ``hash_mod(ids, m, seed)`` computed by Triton."""
    ids = ids.contiguous()
    out = new_output(ids.shape, torch.int64, ids.device)
    if ids.numel():
        block = 1024
        _hash_rows_kernel[(triton.cdiv(ids.numel(), block),)](ids, out, ids.numel(), m, seed_offset(seed), BLOCK=block)
    return out
