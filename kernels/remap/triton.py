"""hash_remap in Triton: one fused element-wise kernel (load id [and modulus], splitmix64, modulo, store).

The torch version (``compactrec.hashing.hash_mod``) is ~12 element-wise ops, each a pass
over nnz int64s; here each id is read once and its row written once, with the splitmix64
of ``kernels/hashing.py`` in registers (native uint64: logical shifts, wrapping products).
Per-value moduli (an (nnz,) tensor, 0 = keep the id) are read beside the ids; a scalar
modulus is a kernel argument.

Memory-traffic model (s = id bytes 4 or 8, u = modulus bytes when per value, nnz ids):
  nnz*(s + u + 8): the ids (and moduli) once, the int64 rows once. No backward.
Cost: 3 xor-shifts, 2 64-bit multiplies and one 64-bit modulo per id (the modulo, a
software routine on GPUs, dominates the ALU time; still far below the memory time).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from compactrec.kernels._common import new_output
from compactrec.kernels.remap.reference import Moduli, check_inputs
from compactrec.kernels.hashing import hash_mod, seed_offset

BLOCK = 1024  # ids per program


@triton.jit(do_not_specialize=["seed_add"])
def _hash_remap_kernel(ids_ptr, mod_ptr, out_ptr, n, m, seed_add, PER_VALUE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    ids = tl.load(ids_ptr + offs, mask=mask, other=0).to(tl.int64)
    if PER_VALUE:
        mods = tl.load(mod_ptr + offs, mask=mask, other=1).to(tl.int64)
        rows = hash_mod(ids, tl.where(mods == 0, 1, mods), seed_add)  # no division by 0 on kept ids
        rows = tl.where(mods == 0, ids, rows)
    else:
        rows = hash_mod(ids, m, seed_add)
    tl.store(out_ptr + offs, rows, mask=mask)


def hash_remap(values: torch.Tensor, moduli: Moduli, *, seed: int) -> torch.Tensor:
    """values (nnz,) int ids, moduli int or (nnz,) -> (nnz,) int64."""
    check_inputs(values, moduli)
    per_value = torch.is_tensor(moduli)
    if not per_value and moduli == 0:
        return values.to(torch.int64, copy=True)
    values = values.contiguous()
    out = new_output(values.shape, torch.int64, values.device)
    n = values.numel()
    if n:
        mods = moduli.contiguous() if per_value else values  # placeholder pointer for a scalar modulus
        _hash_remap_kernel[(triton.cdiv(n, BLOCK),)](
            values, mods, out, n, 1 if per_value else moduli, seed_offset(seed), PER_VALUE=per_value, BLOCK=BLOCK,
        )
    return out
