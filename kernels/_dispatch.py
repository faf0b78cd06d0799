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

Two families of ops:
* id -> pooled (``hash_scale_bag``, ``qr_bag``, ``mixed_dim_bag``): take ids and whole tables
  and gather themselves, so they only apply to unsharded tables;
* composers of what TorchRec looked up (``scale_pool``, ``qr_compose_pool``, ``project_sum``)
  and the id transform in front of the lookups (``hash_remap``): these run in every
  training step, sharded (DMP) or not; their backward is proportional to the batch's ids.
Every call is counted per (op, backend) (``calls()``, ``reset_calls()``): a test can prove
that a training step went through the kernels. Counting is a Python dict update, no sync.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import os
import threading
from types import ModuleType
from typing import Counter, Optional, Sequence, Tuple, Union

import torch

from compactrec.kernels._common import interpreting

ENV = "COMPACTREC_KERNELS"
BACKENDS = ("auto", "reference", "cpu", "triton")

_CALLS: Counter[Tuple[str, str]] = collections.Counter()
_CALLS_LOCK = threading.Lock()


def calls() -> Counter[Tuple[str, str]]:
    """A copy of the call counts so far, keyed (op, backend), e.g. ``("scale_pool", "triton")``."""
    with _CALLS_LOCK:
        return collections.Counter(_CALLS)


def reset_calls() -> None:
    """Forget the counts (a test calls this before the step it checks)."""
    with _CALLS_LOCK:
        _CALLS.clear()


def _count(op: str, backend: str) -> None:
    with _CALLS_LOCK:
        _CALLS[(op, backend)] += 1


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


def _dispatch(name: str, folder: str, *tensors: torch.Tensor) -> ModuleType:
    """Resolve the backend for ``tensors``, count the call of ``name``, return its module."""
    backend = resolve_backend(*tensors)
    _count(name, backend)
    return backend_module(folder, backend)


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
    mod = _dispatch("hash_scale_bag", "hash_scale", values, table)
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
    mod = _dispatch("mixed_dim_bag", "mixed_dim", values, tables[0])
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
    mod = _dispatch("qr_bag", "qr", values, q_table)
    return mod.qr_bag(values, offsets, q_table, r_table, collisions=collisions, operation=operation, mode=mode)


# ---------------------------------------------------------------- composers of looked-up rows
def scale_pool(
    rows: torch.Tensor,
    offsets: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    *,
    mode: str = "sum",
) -> torch.Tensor:
    """Per-id scale (+ bias) of looked-up rows, pooled per bag -> (B, d) (MEmCom after TorchRec's lookup).

    rows (nnz, d) fp32/bf16: one looked-up row per id, in bag order (e.g. an EmbeddingCollection
    JaggedTensor's values); offsets (B+1,) int32/int64 KJT-style; scale, bias (nnz,) or (nnz, 1)
    per-id scalars, or None. out[b] = sum_{j in bag b} (scale_j * rows_j + bias_j), the bias
    broadcast over the d columns; "mean" divides by the bag length; an empty bag gives 0.
    fp32 accumulation, output in rows' dtype. Gradients: rows (nnz, d), scale, bias (their shapes).

    Example::

        rows = ec(kjt)["f"].values()                                   # (nnz, d)
        out = scale_pool(rows, kjt.offsets(), w.view(-1), b.view(-1))  # (B, d)
    """
    return _dispatch("scale_pool", "row_scale", rows, offsets).scale_pool(rows, offsets, scale, bias, mode=mode)


def qr_compose_pool(
    q_rows: torch.Tensor,
    r_rows: torch.Tensor,
    offsets: torch.Tensor,
    *,
    operation: str = "mult",
    mode: str = "sum",
) -> torch.Tensor:
    """Quotient-remainder rows composed per id BEFORE pooling -> (B, d).

    q_rows, r_rows (nnz, d): the looked-up q_table[i // m] and r_table[i % m] of every id, in
    bag order; e_j = q_j * r_j ("mult") or q_j + r_j ("add"); sum or mean per bag (empty: 0).
    Output in q_rows' dtype. Gradients: q_rows and r_rows (nnz, d).
    """
    mod = _dispatch("qr_compose_pool", "qr_compose", q_rows, r_rows, offsets)
    return mod.qr_compose_pool(q_rows, r_rows, offsets, operation=operation, mode=mode)


def project_sum(blocks: Sequence[torch.Tensor], projections: Sequence[Optional[torch.Tensor]]) -> torch.Tensor:
    """Sum of K pooled blocks, each projected to the common width -> (B, d).

    blocks[k] (B, d_k); projections[k] (d_k, d), or None for identity (d_k must equal d).
    out = sum_k blocks[k] @ P_k (+ blocks[k] for identity): mixed-dimension embeddings (pool
    each block, then project) and CAFE's hot/cold merge (all identity). fp32 accumulation,
    output in blocks[0]'s dtype. Gradients: every block (B, d_k) and projection (d_k, d).
    """
    return _dispatch("project_sum", "projection", *blocks).project_sum(blocks, projections)


def hash_remap(values: torch.Tensor, moduli: Union[int, torch.Tensor], *, seed: int) -> torch.Tensor:
    """The id transform in front of hashed lookups -> (nnz,) int64.

    values (nnz,) int32/int64 ids; moduli an int or an (nnz,) int tensor (per-value modulus,
    0 = leave the id unchanged). out_j = ``compactrec.hashing.hash_mod(id_j, m_j, seed)`` bit
    for bit, or id_j where m_j == 0. No gradient.
    """
    tensors = (values, moduli) if torch.is_tensor(moduli) else (values,)
    return _dispatch("hash_remap", "remap", *tensors).hash_remap(values, moduli, seed=seed)


# ---------------------------------------------------------------- ROBE (kernels/robe)
def robe_bag(
    values: torch.Tensor,
    offsets: torch.Tensor,
    bases: torch.Tensor,
    array: torch.Tensor,
    *,
    dim: int,
    mult_id: int,
    mult_block: int,
    mode: str = "sum",
) -> torch.Tensor:
    """ROBE bag -> (B, dim): hash -> gather chunks of the shared array -> pool (unsharded array).

    values (nnz,) int32/int64 ids, offsets (B+1,), bases (nnz,) int64 per-id feature constant
    in [0, P), array (R, Z) the shared array as R rows of Z values (dim % Z == 0). Chunk c of id
    x is row ((base + mult_id (x mod P) + mult_block c) mod P) mod R, P = 2^31 - 1
    (``kernels/robe/reference.py``); out[b] = sum (or mean) over the bag of the concatenated
    chunks. Gradient: the array (R, Z), dense, in its dtype.

    Example::

        out = robe_bag(ids, kjt_offsets, bases, emb.array.embedding_bags["robe_array"].weight,
                       dim=32, mult_id=B, mult_block=C)  # (B, 32)
    """
    mod = _dispatch("robe_bag", "robe", values, array)
    return mod.robe_bag(values, offsets, bases, array, dim=dim, mult_id=mult_id, mult_block=mult_block, mode=mode)


def robe_rows(
    values: torch.Tensor, bases: torch.Tensor, *, num_blocks: int, num_rows: int, mult_id: int, mult_block: int,
) -> torch.Tensor:
    """The id transform in front of a sharded ROBE lookup -> (nnz, num_blocks) int64 array rows,
    bit for bit the rows ``robe_bag`` gathers. values (nnz,) ids, bases (nnz,) int64. No gradient."""
    mod = _dispatch("robe_rows", "robe", values, bases)
    return mod.robe_rows(values, bases, num_blocks=num_blocks, num_rows=num_rows, mult_id=mult_id,
                         mult_block=mult_block)
