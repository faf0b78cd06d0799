"""qr_compose_pool: Triton (interpreted) and CPU paths against the compose-then-pool reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, offsets_of, op_module, run


def _case(dtype, d, lengths=LENGTHS, seed=5, r_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    nnz = sum(lengths)
    q = leaf((nnz, d), dtype, gen, around=1.0)
    r = leaf((nnz, d), r_dtype or dtype, gen, around=1.0)
    grad_out = torch.randn((len(lengths), d), generator=gen).to(dtype).to(DEVICE)
    return q, r, offsets_of(lengths), grad_out


def _compare(backend, operation, mode, q, r, offsets, grad_out):
    def call(mod):
        fn = lambda: mod.qr_compose_pool(q, r, offsets, operation=operation, mode=mode)  # noqa: E731
        out, grads = run(fn, [q, r], grad_out)
        return (out, *grads)

    want = call(op_module("qr_compose", "reference"))
    got = call(op_module("qr_compose", backend))
    assert_same(got, want, ["out", "q_rows", "r_rows"], q.dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("operation", ["mult", "add"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_matches_reference(backend, dtype, operation, mode):
    _compare(backend, operation, mode, *_case(dtype, 13))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("d", [1, 300])
def test_widths(backend, d):
    _compare(backend, "mult", "mean", *_case(torch.float32, d))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2], []])
def test_bag_shapes(backend, lengths):
    _compare(backend, "mult", "sum", *_case(torch.float32, 9, lengths=lengths))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("operation", ["mult", "add"])
def test_mixed_dtypes(backend, operation):
    """bf16 quotient rows with fp32 remainder rows: output in q's dtype, each gradient in its own."""
    _compare(backend, operation, "sum", *_case(torch.bfloat16, 6, r_dtype=torch.float32))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_one_side_frozen(backend):
    q, r, offsets, g = _case(torch.float32, 5)
    mod, ref = op_module("qr_compose", backend), op_module("qr_compose", "reference")
    for op in ("mult", "add"):
        got = torch.autograd.grad(mod.qr_compose_pool(q, r.detach(), offsets, operation=op), [q], g)[0]
        want = torch.autograd.grad(ref.qr_compose_pool(q, r.detach(), offsets, operation=op), [q], g)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_composes_before_pooling():
    """Multi-hot "mult": the sum of products, not the product of sums (dlrm's pitfall)."""
    q = torch.tensor([[1.0], [2.0]], device=DEVICE)
    r = torch.tensor([[3.0], [5.0]], device=DEVICE)
    offsets = torch.tensor([0, 2], device=DEVICE)
    for b in ("reference", "cpu", "triton"):
        out = op_module("qr_compose", b).qr_compose_pool(q, r, offsets)
        assert out.item() == 1 * 3 + 2 * 5  # pooled first would give (1 + 2) * (3 + 5) = 24


def test_rejects_bad_inputs():
    q, r, offsets, _ = _case(torch.float32, 4)
    for b in ("reference", "cpu", "triton"):
        mod = op_module("qr_compose", b)
        with pytest.raises(ValueError, match="operation"):
            mod.qr_compose_pool(q, r, offsets, operation="concat")
        with pytest.raises(ValueError, match="r_rows"):
            mod.qr_compose_pool(q, r[:, :3], offsets)
        with pytest.raises(ValueError, match="offsets run"):
            mod.qr_compose_pool(q[1:], r[1:], offsets)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_strided_rows(backend):
    """q and r as the two halves of one (nnz, 2d) lookup: row stride 2d."""
    gen = torch.Generator().manual_seed(12)
    nnz = sum(LENGTHS)
    both = leaf((nnz, 14), torch.float32, gen, around=1.0)
    g = torch.randn(len(LENGTHS), 7, generator=gen).to(DEVICE)
    offsets = offsets_of(LENGTHS)

    def call(mod):
        out, grads = run(lambda: mod.qr_compose_pool(both[:, :7], both[:, 7:], offsets, mode="mean"), [both], g)
        return (out, *grads)
    assert_same(call(op_module("qr_compose", backend)), call(op_module("qr_compose", "reference")),
                ["out", "both"], torch.float32)
