"""Kernel tests run the Triton kernels under the CPU interpreter.

TRITON_INTERPRET is read when a ``@triton.jit`` function is defined, so it is set here, at
import time, before any test imports ``compactrec.kernels.*.triton`` (tests import those
modules lazily, inside the test functions). Outputs are poisoned (NaN-filled) before each
kernel runs, so an element a kernel forgets to write fails the comparison.
To run the same tests on a GPU: ``TRITON_INTERPRET=0 pytest tests/kernels`` (tensors then
go to CUDA).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["COMPACTREC_KERNELS_POISON"] = "1"
