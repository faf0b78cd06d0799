"""COMPACTREC_KERNELS picks the backend; an explicit backend that cannot run raises."""

from __future__ import annotations

import math

import pytest
import torch

from compactrec import kernels
from compactrec.kernels._common import interpreting, new_output, poison_enabled
from compactrec.kernels._dispatch import ENV, resolve_backend
from tests.kernels.cases import DEVICE, assert_same

CPU = torch.zeros(1)
interpreter_only = pytest.mark.skipif(not interpreting(), reason="checks the CPU interpreter set-up")


def test_auto_on_cpu_is_the_native_path(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert resolve_backend(CPU) == "cpu"
    monkeypatch.setenv(ENV, "auto")
    assert resolve_backend(CPU) == "cpu"


@interpreter_only
@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_explicit_backends(monkeypatch, name):
    monkeypatch.setenv(ENV, name)
    assert resolve_backend(CPU) == name  # triton runs here under TRITON_INTERPRET=1 (conftest)


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    monkeypatch.setenv(ENV, "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="CUDA device"):
        resolve_backend(CPU)


def test_unknown_backend_raises(monkeypatch):
    monkeypatch.setenv(ENV, "cuda")
    with pytest.raises(ValueError, match=ENV):
        resolve_backend(CPU)


def _public_calls():
    """One call of every public op on tiny inputs; returns (outputs, names)."""
    values, offsets = torch.tensor([3, 1, 4, 1, 5], dtype=torch.int32), torch.tensor([0, 2, 2, 5])
    gen = torch.Generator().manual_seed(0)
    table, scale = torch.randn(7, 6, generator=gen), torch.rand(9, generator=gen)
    tables = [torch.randn(4, 3, generator=gen), torch.randn(2, 6, generator=gen)]
    projs = [torch.randn(3, 6, generator=gen), None]
    q, r = torch.randn(3, 6, generator=gen), torch.randn(2, 6, generator=gen)
    rows, w, b = torch.randn(5, 6, generator=gen), torch.rand(5, generator=gen), torch.randn(5, generator=gen)
    rows2, pooled = torch.randn(5, 6, generator=gen), torch.randn(3, 4, generator=gen)
    values, offsets, table, scale, q, r, rows, w, b, rows2, pooled = (
        t.to(DEVICE) for t in (values, offsets, table, scale, q, r, rows, w, b, rows2, pooled))
    tables, projs = [t.to(DEVICE) for t in tables], [projs[0].to(DEVICE), None]
    moduli = torch.tensor([0, 5, 1, 7, 0], device=DEVICE)
    bases = torch.tensor([9, 0, 2**31 - 2, 4, 4], dtype=torch.int64, device=DEVICE)
    out = {
        "hash_scale_bag": kernels.hash_scale_bag(values, offsets, table, scale, seed=5),
        "mixed_dim_bag": kernels.mixed_dim_bag(values, offsets, [0, 4, 6], tables, projs),
        "qr_bag": kernels.qr_bag(values, offsets, q, r, collisions=2),
        "scale_pool": kernels.scale_pool(rows, offsets, w, b, mode="mean"),
        "qr_compose_pool": kernels.qr_compose_pool(rows, rows2, offsets),
        "project_sum": kernels.project_sum([pooled, rows2[:3]], [pooled.new_ones(4, 6), None]),
        "hash_remap": kernels.hash_remap(values, moduli, seed=2).float(),
        "robe_bag": kernels.robe_bag(values, offsets, bases, table[:, :3], dim=6, mult_id=11, mult_block=5),
        "robe_rows": kernels.robe_rows(values, bases, num_blocks=2, num_rows=7, mult_id=11, mult_block=5).float(),
    }
    return list(out.values()), list(out)


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_public_ops_run_every_backend(monkeypatch, name):
    """The dispatching functions give another backend's answer (the reference's; the CPU
    path's when the reference itself runs) whichever backend runs."""
    monkeypatch.setenv(ENV, name)
    got, names = _public_calls()
    monkeypatch.setenv(ENV, "cpu" if name == "reference" else "reference")
    want, _ = _public_calls()
    assert_same(got, want, names, torch.float32)


@pytest.mark.parametrize("name", ["reference", "cpu", "triton"])
def test_calls_are_counted_per_op_and_backend(monkeypatch, name):
    """Every public call counts once under (op, the backend that ran): proof a step used the kernels."""
    monkeypatch.setenv(ENV, name)
    kernels.reset_calls()
    _, names = _public_calls()
    assert kernels.calls() == {(op, name): 1 for op in names}
    snapshot = kernels.calls()
    kernels.scale_pool(torch.randn(2, 3, device=DEVICE), torch.tensor([0, 2], device=DEVICE))
    assert kernels.calls()[("scale_pool", name)] == 2
    assert snapshot[("scale_pool", name)] == 1  # calls() hands back a copy
    kernels.reset_calls()
    assert not kernels.calls()


def test_auto_counts_the_backend_it_resolved(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    kernels.reset_calls()
    kernels.hash_remap(torch.arange(3), 2, seed=0)
    want = "triton" if DEVICE == "cuda" else "cpu"
    assert kernels.calls() == {("hash_remap", want): 1}


@interpreter_only
def test_auto_picks_triton_only_on_cuda(monkeypatch):
    monkeypatch.setenv(ENV, "auto")
    assert resolve_backend(CPU, CPU) == "cpu"  # CPU tensors: native path even with the interpreter on


def test_outputs_are_poisoned_in_tests():
    """conftest turns poisoning on: a kernel output starts as NaN, and the comparison
    helper rejects an element left unwritten."""
    assert poison_enabled()
    buf = new_output((3, 4), torch.float32, "cpu")
    assert all(math.isnan(x) for x in buf.view(-1).tolist())
    buf[:, :3] = 0.0  # a "kernel" that forgets the last column
    with pytest.raises(AssertionError, match="non-finite"):
        assert_same([buf], [torch.zeros(3, 4)], ["out"], torch.float32)


def test_offsets_must_cover_the_values():
    from compactrec.kernels._common import check_jagged

    with pytest.raises(ValueError, match="offsets run from 0 to 2"):
        check_jagged(torch.arange(3), torch.tensor([0, 2]), "op")
