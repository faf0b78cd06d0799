"""HyperLogLog distinct-count sketches, vectorised and mergeable (max of registers).

Each conversion piece sketches every categorical feature's non-empty raw values; the
driver merges the pieces' registers and writes the estimates to the manifest. Precision
p = 14 (16 KiB of uint8 registers per feature): relative standard error 1.04 / sqrt(2^p)
= 0.81%; small counts use linear counting (near exact). Hash: murmur3's 64-bit finalizer.

Example::

    reg = new_registers(3)             # 3 features
    update(reg[0], np.array([5, 7, 5]))
    estimate(reg[0])                   # ~2.0
"""

from __future__ import annotations

import numpy as np

PRECISION = 14
_M = 1 << PRECISION
_U = np.uint64


def new_registers(features: int) -> np.ndarray:
    return np.zeros((features, _M), np.uint8)


def _mix(values: np.ndarray) -> np.ndarray:
    x = values.astype(_U)
    x ^= x >> _U(33)
    x *= _U(0xFF51AFD7ED558CCD)
    x ^= x >> _U(33)
    x *= _U(0xC4CEB9FE1A85EC53)
    x ^= x >> _U(33)
    return x


def update(registers: np.ndarray, values: np.ndarray) -> None:
    """Add ``values`` (int64, any shape) to one feature's ``registers`` (in place)."""
    if values.size == 0:
        return
    h = _mix(values.reshape(-1))
    index = (h >> _U(64 - PRECISION)).astype(np.intp)
    w = (h << _U(PRECISION)) | _U(1 << (PRECISION - 1))  # the guard bit caps rho at 64 - p + 1
    # rho = leading zeros + 1 = 64 - floor(log2 w): floor(log2) from the float64 exponent
    # (w rounds up to a power of two only when its top 53 bits are all ones: p ~ 2^-53).
    exponent = (w.astype(np.float64).view(_U) >> _U(52)).astype(np.int64) - 1023
    rho = (64 - exponent).astype(np.uint8)
    np.maximum.at(registers, index, rho)


def merge(into: np.ndarray, other: np.ndarray) -> None:
    np.maximum(into, other, out=into)


def estimate(registers: np.ndarray) -> float:
    m = float(registers.shape[-1])
    alpha = 0.7213 / (1.0 + 1.079 / m)
    raw = alpha * m * m / float(np.sum(np.ldexp(1.0, -registers.astype(np.int32))))
    zeros = int(np.count_nonzero(registers == 0))
    if raw <= 2.5 * m and zeros:
        return m * float(np.log(m / zeros))  # linear counting
    return raw
