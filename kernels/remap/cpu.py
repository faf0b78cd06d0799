"""hash_remap on native ops: the same splitmix64 as ``compactrec.hashing``, in place on one buffer.

``compactrec.hashing.hash_mod`` allocates a fresh (nnz,) int64 tensor for each of its ~12
element-wise steps; here the steps run in place on the output with one scratch buffer for
the shifted copies (same arithmetic, so bit-identical), and a scalar modulus stays a
scalar. Device-agnostic torch; torch has no uint64 arithmetic, so, as there, the int64 bit
patterns wrap on multiply and logical right shifts are arithmetic shifts plus a mask.
"""

from __future__ import annotations

import torch

from compactrec.hashing import GOLDEN, M1, M2, _signed
from compactrec.kernels.remap.reference import Moduli, check_inputs

_TOP = 0x7FFFFFFFFFFFFFFF


def _mix_(x: torch.Tensor, tmp: torch.Tensor, shift: int, mult: int) -> None:
    """x = (x ^ (x >>> shift)) * mult, in place (tmp: scratch of x's shape)."""
    torch.bitwise_right_shift(x, shift, out=tmp)
    tmp.bitwise_and_((1 << (64 - shift)) - 1)
    x.bitwise_xor_(tmp)
    if mult:
        x.mul_(_signed(mult))


def hash_remap(values: torch.Tensor, moduli: Moduli, *, seed: int) -> torch.Tensor:
    """values (nnz,) int ids, moduli int or (nnz,) -> (nnz,) int64."""
    check_inputs(values, moduli)
    per_value = torch.is_tensor(moduli)
    if not per_value and moduli == 0:
        return values.to(torch.int64, copy=True)
    x = values.to(torch.int64, copy=True)
    tmp = torch.empty_like(x)
    x.add_(_signed(GOLDEN * (seed + 1)))
    _mix_(x, tmp, 30, M1)
    _mix_(x, tmp, 27, M2)
    _mix_(x, tmp, 31, 0)
    x.bitwise_and_(_TOP)
    if not per_value:
        return x.remainder_(moduli)
    m = moduli.to(torch.int64)
    keep = m == 0
    x.remainder_(m.masked_fill(keep, 1))
    return torch.where(keep, values.to(torch.int64), x)
