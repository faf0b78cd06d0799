"""Fused embedding ops for the compressed tables, each beside its PyTorch reference.

    from compactrec.kernels import scale_pool, qr_compose_pool, project_sum, hash_remap  # after TorchRec
    from compactrec.kernels import hash_scale_bag, mixed_dim_bag, qr_bag                 # ids + whole tables

One folder per op, each with ``reference.py`` (the oracle), ``cpu.py`` (native torch / FBGEMM:
the fast CPU path, device-agnostic) and ``triton.py`` (``@triton.jit`` kernels -> launcher ->
autograd.Function -> public op):
* ``row_scale/`` (scale_pool), ``qr_compose/`` (qr_compose_pool), ``projection/`` (project_sum),
  ``remap/`` (hash_remap): compose the rows TorchRec looked up (or remap the ids before it
  does), so they run in every training step, sharded or not; backward work and memory are
  proportional to the batch's ids (nnz x d);
* ``hash_scale/``, ``qr/``, ``mixed_dim/``, ``robe/`` (robe_bag): take ids and whole tables and
  gather themselves (unsharded tables only); ``robe/`` also holds robe_rows, the hash in front
  of a sharded ROBE lookup.
A folder never shares its name with a public op: importing ``compactrec.kernels.<folder>``
sets that attribute on this package and would shadow the function.
The functions exported here are the one dispatch point (``_dispatch.py``): ``COMPACTREC_KERNELS=
auto|reference|cpu|triton`` chooses the backend per call, and ``calls()`` counts the calls per
(op, backend) (``reset_calls()`` clears). ``hashing.py`` holds the Triton splitmix64 shared by
the kernels; ``_segment.py`` the sorted segment-reduction backward. HotSketch batch insert is
not here: the vectorised torch sketch lives in embeddings/.
Importing this package does not import Triton; nothing here imports more than torch, numpy
(through ``compactrec.hashing``) and, in the ``triton.py`` modules, triton.
"""

from compactrec.kernels._dispatch import (  # noqa: F401
    BACKENDS,
    calls,
    hash_remap,
    hash_scale_bag,
    mixed_dim_bag,
    project_sum,
    qr_bag,
    qr_compose_pool,
    reset_calls,
    resolve_backend,
    robe_bag,
    robe_rows,
    scale_pool,
)

__all__ = [
    "BACKENDS", "calls", "hash_remap", "hash_scale_bag", "mixed_dim_bag", "project_sum", "qr_bag",
    "qr_compose_pool", "reset_calls", "resolve_backend", "robe_bag", "robe_rows", "scale_pool",
]
