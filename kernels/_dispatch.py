"""The one dispatch point: ``COMPACTREC_KERNELS=auto|reference|cpu|triton`` picks a backend per call.

* ``auto`` (default): Triton when the inputs are on a CUDA device and Triton is installed,
  else the CPU path (native torch / FBGEMM ops; it also runs on any device).
* ``reference``: the pure-PyTorch oracles (slow, obviously right).
* ``cpu``: the native path, whatever the device.
* ``triton``: the Triton kernels; raises when they cannot run: Triton missing, or CPU tensors
  without ``TRITON_INTERPRET=1`` (set before the kernel modules are first imported: that is
  how CI runs them, under the interpreter).
The variable is read at every call (cheap), so tests and benchmarks can switch it. Backend
modules are imported lazily: importing ``compactrec.kernels`` never imports Triton.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from types import ModuleType
from typing import Optional, Sequence

import torch

from compactrec.kernels._common import interpreting

ENV = "COMPACTREC_KERNELS"
BACKENDS = ("auto", "reference", "cpu", "triton")


def requested_backend() -> str:
    name = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r}: expected one of {BACKENDS}")
    return name


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(*tensors: torch.Tensor) -> str:
    """The backend a call on ``tensors`` runs: "reference", "cpu" or "triton"."""
    name = requested_backend()
    on_cuda = all(t.is_cuda for t in tensors)
    if name == "auto":
        return "triton" if on_cuda and _triton_installed() else "cpu"
    if name == "triton":
        if not _triton_installed():
            raise RuntimeError(f"{ENV}=triton: the triton package is not installed")
        if not on_cuda:
            if not interpreting():
                devices = sorted({str(t.device) for t in tensors})
                raise RuntimeError(
                    f"{ENV}=triton: inputs are on {devices}; Triton kernels need a CUDA device, or "
                    "TRITON_INTERPRET=1 set before compactrec.kernels.*.triton is imported (CPU interpreter)"
                )
            from compactrec.kernels import hashing

            if not hashing.INTERPRETED:
                raise RuntimeError(
                    f"{ENV}=triton: TRITON_INTERPRET=1 was set after the Triton kernels were imported; "
                    "set it before the first import (e.g. at the top of conftest.py)"
                )
    return name


def backend_module(op: str, backend: str) -> ModuleType:
    """``compactrec.kernels.<op>.<backend>`` (imported on first use)."""
    return importlib.import_module(f"compactrec.kernels.{op}.{backend}")


def hash_scale_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    table: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    num_rows: Optional[int] = None,
    seed: int = 0,
    hashed: bool = True,
    mode: str = "sum",
) -> torch.Tensor:
    """Fused MEmCom / hashing-trick bag -> (B, d).

    values (nnz,) int32/int64 entity ids, offsets (B+1,) KJT-style, table (m, d) shared rows,
    scale / bias: optional per-entity vectors indexed by the ORIGINAL id (length > max id).
    e(i) = scale[i] * table[h(i)] + bias[i], h(i) = hash_mod(i, num_rows or m, seed) if hashed
    else i (then ids must be < m); sum or mean per bag (an empty bag gives 0).
    Gradients: table, scale, bias (dense, in their own dtypes).

    Example::

        out = hash_scale_bag(kjt_values, kjt_offsets, table, scale.view(-1), seed=3)  # (B, d)
    """
    mod = backend_module("hash_scale", resolve_backend(values, table))
    return mod.hash_scale_bag(values, offsets, table, scale, bias, num_rows=num_rows, seed=seed, hashed=hashed,
                              mode=mode)


def mixed_dim_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    block_offsets,
    tables: Sequence[torch.Tensor],
    projections: Sequence[Optional[torch.Tensor]],
    mode: str = "sum",
) -> torch.Tensor:
    """Mixed-dimension bag -> (B, d): block k owns rows [block_offsets[k], block_offsets[k+1]).

    tables[k] (n_k, d_k); projections[k] (d_k, d) or None (identity, d_k == d);
    out[b] = sum_k (sum of the bag's block-k rows) @ P_k (pooled per block, then projected);
    "mean" divides by the bag's total length. values must lie in [0, block_offsets[-1]).
    block_offsets: K+1 ints (a list, or a tensor: read once with .tolist()).
    Gradients: every table and projection.
    """
    mod = backend_module("mixed_dim", resolve_backend(values, tables[0]))
    return mod.mixed_dim_bag(values, offsets, block_offsets, tables, projections, mode=mode)


def qr_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    q_table: torch.Tensor,
    r_table: torch.Tensor,
    *,
    collisions: int,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """Quotient-remainder bag -> (B, d), composed per id BEFORE pooling.

    e(i) = q_table[i // collisions] * (or +) r_table[i % collisions]. Gradients: both tables.
    """
    mod = backend_module("qr", resolve_backend(values, q_table))
    return mod.qr_bag(values, offsets, q_table, r_table, collisions=collisions, operation=operation, mode=mode)
