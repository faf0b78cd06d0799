"""The Triton splitmix64 / hash_mod reproduces compactrec.hashing.hash_mod bit for bit."""

from __future__ import annotations

import pytest
import torch

from compactrec.hashing import hash_mod
from tests.kernels.cases import DEVICE


def _ids(dtype: torch.dtype) -> torch.Tensor:
    hi = torch.iinfo(dtype).max
    gen = torch.Generator().manual_seed(0)
    return torch.cat([
        torch.arange(1000, dtype=dtype),  # dense small ids (Criteo after remapping)
        torch.randint(0, hi, (3000,), generator=gen, dtype=torch.int64).to(dtype),
        torch.tensor([hi, hi - 1, 2**31 - 1, 2**31 if dtype == torch.int64 else 7], dtype=dtype),
        torch.tensor([2**62 + 12345, 2**63 - 2**40] if dtype == torch.int64 else [2**30, 2**31 - 2], dtype=dtype),
    ]).to(DEVICE)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("seed", [0, 1, 7, 2**20 + 3])
@pytest.mark.parametrize("m", [1, 2, 17, 1000, 2**31 - 1, 2**40 + 3])
def test_hash_rows_bit_exact(dtype, seed, m):
    from compactrec.kernels.hashing import hash_rows

    ids = _ids(dtype)
    got = hash_rows(ids, m, seed)
    assert got.dtype == torch.int64
    assert torch.equal(got.cpu(), hash_mod(ids.cpu(), m, seed))


def test_hash_rows_empty():
    from compactrec.kernels.hashing import hash_rows

    assert hash_rows(torch.empty(0, dtype=torch.int64, device=DEVICE), 5).numel() == 0
