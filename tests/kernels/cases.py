"""Shared test inputs: jagged bags with the odd cases, and per-dtype tolerances."""

from __future__ import annotations

import importlib
import os
from typing import List, Sequence

import torch

# Bags: empty at both ends and in the middle, length 1, a long bag (37), duplicates.
LENGTHS = [0, 1, 3, 0, 37, 2, 1, 1, 5, 0, 12, 1, 0]

# fp32: sums of up to ~40 terms in another order differ by a few ulp of the sum.
# bf16: both sides round an fp32 result once (1 ulp = 2^-8..2^-7 relative); the CPU path may
# round one intermediate too (a pooled table before adding the bias or the second QR bag),
# so allow two ulps.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
    torch.float16: dict(atol=3e-3, rtol=3e-3),  # fp16 tables (embedding.precision): 2 ulps of 2^-11..2^-10
}

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") or not torch.cuda.is_available() else "cuda"


def op_module(op: str, backend: str):
    """``compactrec.kernels.<op>.<backend>``, imported lazily (after conftest set TRITON_INTERPRET)."""
    return importlib.import_module(f"compactrec.kernels.{op}.{backend}")


def offsets_of(lengths: Sequence[int]) -> torch.Tensor:
    return torch.tensor([0] + list(lengths), dtype=torch.int64).cumsum(0).to(DEVICE)


def make_values(lengths: Sequence[int], high: int, must_have: Sequence[int], gen: torch.Generator,
                id_dtype=torch.int64) -> torch.Tensor:
    """Random ids in [0, high) for the bags, with duplicates inside bags and ``must_have`` placed.

    Bag 2 (length 3) repeats one id three times; the long bag draws from 8 ids (so it repeats);
    ``must_have`` ids (e.g. the table's last row) fill the first slots of the long bag.
    """
    parts: List[torch.Tensor] = []
    for i, n in enumerate(lengths):
        if n == 3:
            parts.append(torch.randint(0, high, (1,), generator=gen).repeat(3))
        elif n == 37:
            pool = torch.randint(0, high, (8,), generator=gen)
            bag = pool[torch.randint(0, 8, (n,), generator=gen)]
            bag[: len(must_have)] = torch.tensor(list(must_have), dtype=torch.int64)
            parts.append(bag)
        else:
            parts.append(torch.randint(0, high, (n,), generator=gen))
    values = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64)
    return values.to(id_dtype).to(DEVICE)


def leaf(shape, dtype, gen: torch.Generator, *, around: float = 0.0) -> torch.Tensor:
    return (torch.randn(shape, generator=gen) + around).to(dtype).to(DEVICE).requires_grad_(True)


def run(fn, params: Sequence[torch.Tensor], grad_out: torch.Tensor):
    """Forward output and the gradients of every param for ``grad_out``."""
    out = fn()
    grads = torch.autograd.grad(out, list(params), grad_out, allow_unused=True)
    return out, grads


def assert_same(got, want, names: Sequence[str], dtype: torch.dtype) -> None:
    """Output and gradients: same dtype and shape, all finite (poisoned buffers), within TOL."""
    for name, g, w in zip(names, got, want):
        assert g is not None and w is not None, name
        assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, w.dtype, g.shape, w.shape)
        assert torch.isfinite(g).all(), f"{name}: non-finite (unwritten poisoned element?)"
        torch.testing.assert_close(g.float(), w.float(), **TOL[dtype], msg=lambda m: f"{name}: {m}")
