"""hash_remap: every backend reproduces compactrec.hashing.hash_mod bit for bit (0 keeps the id)."""

from __future__ import annotations

import pytest
import torch

from compactrec.hashing import hash_mod
from tests.kernels.cases import DEVICE, op_module

BACKENDS = ["reference", "cpu", "triton"]


def _ids(dtype: torch.dtype, n: int = 600) -> torch.Tensor:
    hi = torch.iinfo(dtype).max
    gen = torch.Generator().manual_seed(8)
    return torch.cat([
        torch.arange(100, dtype=dtype),
        torch.randint(0, hi, (n,), generator=gen, dtype=torch.int64).to(dtype),
        torch.tensor([hi, hi - 1, 2**31 - 1], dtype=dtype),
    ])


def _want(ids: torch.Tensor, moduli, seed: int) -> torch.Tensor:
    """The definition, one value at a time: hash_mod(id, m, seed), or the id where m == 0."""
    ids = ids.to(torch.int64)
    if not torch.is_tensor(moduli):
        return hash_mod(ids, moduli, seed) if moduli else ids
    out = ids.clone()
    for m in moduli.unique().tolist():
        sel = moduli == m
        if m:
            out[sel] = hash_mod(ids[sel], m, seed)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed", [0, 7, 2**20 + 3])
@pytest.mark.parametrize("m", [0, 1, 17, 2**31 - 1, 2**40 + 3])
def test_scalar_modulus(backend, dtype, seed, m):
    ids = _ids(dtype)
    got = op_module("remap", backend).hash_remap(ids.to(DEVICE), m, seed=seed)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), _want(ids, m, seed))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mod_dtype", [torch.int32, torch.int64])
def test_per_value_moduli(backend, dtype, mod_dtype):
    """One modulus per value (e.g. each feature's table size); 0 leaves the id unchanged."""
    ids = _ids(dtype)
    gen = torch.Generator().manual_seed(9)
    choices = torch.tensor([0, 1, 5, 1000, 2**31 - 1] + ([2**40 + 3] if mod_dtype == torch.int64 else []))
    moduli = choices[torch.randint(0, len(choices), ids.shape, generator=gen)].to(mod_dtype)
    got = op_module("remap", backend).hash_remap(ids.to(DEVICE), moduli.to(DEVICE), seed=3)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), _want(ids, moduli, 3))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_no_alias(backend):
    mod = op_module("remap", backend)
    empty = torch.empty(0, dtype=torch.int64, device=DEVICE)
    assert mod.hash_remap(empty, 5, seed=1).numel() == 0
    assert mod.hash_remap(empty, empty.clone(), seed=1).numel() == 0
    ids = torch.arange(4, device=DEVICE)
    kept = mod.hash_remap(ids, 0, seed=1)
    assert torch.equal(kept, ids) and kept.data_ptr() != ids.data_ptr()  # a new tensor, never the input


def test_rejects_bad_inputs():
    ids = torch.arange(5, device=DEVICE)
    for b in BACKENDS:
        mod = op_module("remap", b)
        with pytest.raises(ValueError, match=">= 0"):
            mod.hash_remap(ids, -3, seed=0)
        with pytest.raises(ValueError, match=">= 0"):
            mod.hash_remap(ids, torch.tensor([1, 2, -1, 0, 4], device=DEVICE), seed=0)
        with pytest.raises(ValueError, match="shaped like values"):
            mod.hash_remap(ids, torch.tensor([1, 2], device=DEVICE), seed=0)
        with pytest.raises(ValueError, match="1-D int32/int64"):
            mod.hash_remap(ids.float(), 3, seed=0)
        with pytest.raises(TypeError):
            mod.hash_remap(ids, 3)  # the seed is required: a forgotten seed is a silent collision
