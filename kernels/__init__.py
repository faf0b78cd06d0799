"""Fused embedding-bag ops for the compressed tables, each beside its PyTorch reference.

    from compactrec.kernels import hash_scale_bag, mixed_dim_bag, qr_bag

One folder per op (``hash_scale/``, ``mixed_dim/``, ``qr/``), each with ``reference.py``
(the oracle), ``cpu.py`` (native torch / FBGEMM: the fast CPU path) and ``triton.py``
(``@triton.jit`` kernels -> launcher -> autograd.Function -> public op). The functions
exported here are the one dispatch point (``_dispatch.py``): ``COMPACTREC_KERNELS=
auto|reference|cpu|triton`` chooses the backend per call. ``hashing.py`` holds the Triton
splitmix64 shared by the kernels; ``_segment.py`` the sorted segment-reduction backward.
HotSketch batch insert is not here: the vectorised torch sketch lives in embeddings/.
Importing this package does not import Triton.
"""

from compactrec.kernels._dispatch import (  # noqa: F401
    BACKENDS,
    hash_scale_bag,
    mixed_dim_bag,
    qr_bag,
    resolve_backend,
)

__all__ = ["BACKENDS", "hash_scale_bag", "mixed_dim_bag", "qr_bag", "resolve_backend"]
