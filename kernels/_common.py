"""Helpers shared by the three ops and their backends (no Triton import here).

Jagged inputs follow a KJT: ``values`` (nnz,) ids, ``offsets`` (B+1,) int64 with bag b holding
``values[offsets[b]:offsets[b+1]]``. Nothing here syncs with a CUDA device (no ``.item()``),
so the launchers stay asynchronous.
"""

from __future__ import annotations

import math
import os
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

MODES = ("sum", "mean")
POISON_ENV = "COMPACTREC_KERNELS_POISON"


def check_mode(mode: str) -> bool:
    """Validate ``mode``; returns True for mean pooling."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {MODES}")
    return mode == "mean"


def check_jagged(values: torch.Tensor, offsets: torch.Tensor, op: str) -> torch.Tensor:
    """Validate a KJT-style pair; returns offsets as contiguous int64 (B+1,).

    offsets[0] must be 0 and offsets[-1] == values.numel() (one feature's jagged tensor):
    the backward passes walk every value. Checked on CPU only (on CUDA it would sync).
    """
    if values.dim() != 1 or values.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: values must be a 1-D int32/int64 tensor, got {values.dtype} {tuple(values.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError(f"{op}: offsets must be 1-D with B+1 entries, got {tuple(offsets.shape)}")
    if not offsets.is_cuda and (int(offsets[0]) != 0 or int(offsets[-1]) != values.numel()):
        raise ValueError(f"{op}: offsets run from {int(offsets[0])} to {int(offsets[-1])}; "
                         f"expected 0 to values.numel() = {values.numel()}")
    return offsets.to(torch.int64).contiguous()


def lengths_of(offsets: torch.Tensor) -> torch.Tensor:
    """(B+1,) offsets -> (B,) int64 bag lengths."""
    return offsets[1:] - offsets[:-1]


def inv_lengths(offsets: torch.Tensor) -> torch.Tensor:
    """(B,) fp32 1/len per bag for mean pooling; an empty bag gets 1 (its sum is 0 anyway)."""
    return 1.0 / lengths_of(offsets).clamp(min=1).to(torch.float32)


def bag_of(offsets: torch.Tensor, nnz: int) -> torch.Tensor:
    """(nnz,) int64 bag index of every value; ``output_size`` avoids a device sync."""
    b = offsets.numel() - 1
    return torch.repeat_interleave(
        torch.arange(b, device=offsets.device), lengths_of(offsets), output_size=nnz
    )


def sort_segments(keys: torch.Tensor, num_rows: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Group occurrences by destination row: the CSR that the backward kernels reduce over.

    keys (nnz,) int64 in [0, num_rows) -> perm (nnz,) int64 occurrence indices sorted by key
    (stable, so the reduction order and hence the result are deterministic) and
    seg (num_rows+1,) int64: the occurrences of row r are perm[seg[r]:seg[r+1]].
    """
    narrow = keys.to(torch.int32) if num_rows < 2**31 else keys  # radix sort: half the passes
    perm = torch.sort(narrow, stable=True).indices
    seg = torch.zeros(num_rows + 1, dtype=torch.int64, device=keys.device)
    if keys.numel():
        seg[1:] = torch.cumsum(torch.bincount(keys, minlength=num_rows)[:num_rows], 0)
    return perm, seg


def transposed_bag(
    rows: torch.Tensor, bags: torch.Tensor, grad: torch.Tensor, num_rows: int,
    weights: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Table gradient of a pooled lookup on native ops: (num_rows, D) fp32.

    grad_table[r] = sum over occurrences j with rows_j == r of weights_j * grad[bags_j]:
    sort the occurrences by row (``sort_segments``), then one ``F.embedding_bag`` over
    ``grad`` with the row CSR as offsets. On CPU that is FBGEMM's pooled kernel: each
    gradient row is written once (zeros where untouched), no (nnz, D) intermediate.
    """
    perm, seg = sort_segments(rows, num_rows)
    psw = weights.index_select(0, perm) if weights is not None else None
    return F.embedding_bag(bags.index_select(0, perm), grad.float(), seg, mode="sum", include_last_offset=True,
                           per_sample_weights=psw)


def poison_enabled() -> bool:
    """Debug mode (tests): kernel outputs start as NaN so an unwritten element is caught."""
    return os.environ.get(POISON_ENV, "0") not in ("", "0")


def new_output(shape, dtype: torch.dtype, device) -> torch.Tensor:
    """An output buffer the kernel must fully overwrite (NaN, or -1 for ints, in poison mode)."""
    if poison_enabled():
        fill = math.nan if dtype.is_floating_point else -1
        return torch.full(shape, fill, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def next_pow2(x: int) -> int:
    return 1 if x <= 1 else 1 << (int(x) - 1).bit_length()


def interpreting() -> bool:
    """True when Triton kernels run under the CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tile_sizes(
    num_groups: int, items: int, width: int, *, min_groups: int = 1, full_width: bool = False
) -> Tuple[int, int, int]:
    """Block sizes (BLOCK_G, BLOCK_N, BLOCK_D) for a (groups x items x width) gather tile.

    A program owns BLOCK_G groups (bags, or table rows in the backward), walks their items
    (ids) BLOCK_N at a time and covers BLOCK_D columns. BLOCK_N follows the average group
    size (known without a device sync: nnz / groups), capped so a skewed tile still moves.
    The element budget bounds registers on a GPU (~32 fp32 registers/thread at 4 warps);
    under the interpreter every program step is one numpy call, so tiles there are larger.
    BLOCK_N is at least 2: Triton 3.7.1's compiler crashes (TritonGPURemoveLayoutConversions)
    on some (G, 1, D) tiles, e.g. hash_scale_bag's forward at one-hot bags and d = 128
    (G = 32); 3.6 compiles them. benchmarks/triton_compile_check.py finds such launches.
    """
    budget = 1 << 15 if interpreting() else 4096
    block_d = next_pow2(width) if full_width else min(next_pow2(width), 256)
    avg = max(1, math.ceil(items / max(num_groups, 1)))
    block_n = max(2, min(next_pow2(avg), 32, max(1, budget // (block_d * min_groups))))
    block_g = max(min_groups, min(128, budget // (block_n * block_d), next_pow2(num_groups)))
    return block_g, block_n, block_d


def check_rows(rows: torch.Tensor, offsets: torch.Tensor, op: str, name: str = "rows") -> torch.Tensor:
    """Validate looked-up rows (nnz, d) against KJT-style offsets; returns offsets as int64 (B+1,).

    The ops that compose what TorchRec looked up take one row per id, in bag order, so
    offsets must run from 0 to rows.shape[0] (checked on CPU only: on CUDA it would sync).
    """
    if rows.dim() != 2 or not rows.dtype.is_floating_point:
        raise ValueError(f"{op}: {name} must be a 2-D float tensor (nnz, d), got {rows.dtype} {tuple(rows.shape)}")
    if offsets.dim() != 1 or offsets.numel() < 1 or offsets.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{op}: offsets must be 1-D int32/int64 with B+1 entries, got {offsets.dtype} "
                         f"{tuple(offsets.shape)}")
    if not offsets.is_cuda and (int(offsets[0]) != 0 or int(offsets[-1]) != rows.shape[0]):
        raise ValueError(f"{op}: offsets run from {int(offsets[0])} to {int(offsets[-1])}; "
                         f"expected 0 to {name}.shape[0] = {rows.shape[0]}")
    return offsets.to(torch.int64).contiguous()


def check_per_id(x: Optional[torch.Tensor], nnz: int, op: str, name: str) -> None:
    """A per-id vector (scale, bias): None, or a float tensor (nnz,) or (nnz, 1) (a 1-wide lookup)."""
    if x is not None and (tuple(x.shape) not in ((nnz,), (nnz, 1)) or not x.dtype.is_floating_point):
        raise ValueError(f"{op}: {name} must be a float tensor (nnz,) or (nnz, 1) with nnz = {nnz} (one per "
                         f"looked-up row), got {x.dtype} {tuple(x.shape)}")
