"""qr_bag: Triton (interpreted) and CPU paths against the compose-then-pool reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, make_values, offsets_of, op_module, run


def _case(dtype, id_dtype, m, n, d, lengths=LENGTHS, seed=3):
    gen = torch.Generator().manual_seed(seed)
    nq = -(-n // m)
    values = make_values(lengths, n, [n - 1, m - 1, (nq - 1) * m], gen, id_dtype)  # last q and r rows
    q = leaf((nq, d), dtype, gen, around=1.0)
    r = leaf((m, d), dtype, gen, around=1.0)
    grad_out = torch.randn((len(lengths), d), generator=gen).to(dtype).to(DEVICE)
    return values, offsets_of(lengths), q, r, m, grad_out


def _compare(backend, operation, mode, values, offsets, q, r, m, grad_out):
    def call(mod):
        fn = lambda: mod.qr_bag(values, offsets, q, r, collisions=m, operation=operation, mode=mode)  # noqa: E731
        out, grads = run(fn, [q, r], grad_out)
        return (out, *grads)

    want = call(op_module("qr", "reference"))
    got = call(op_module("qr", backend))
    assert_same(got, want, ["out", "q_table", "r_table"], q.dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("operation", ["mult", "add"])
@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_matches_reference(backend, dtype, id_dtype, operation, mode):
    _compare(backend, operation, mode, *_case(dtype, id_dtype, m=7, n=63, d=13))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
# ragged last q row and d=1; wider than a column block; m=1 (r has one row); one q row
@pytest.mark.parametrize("m,n,d", [(7, 60, 1), (16, 500, 300), (1, 30, 5), (500, 500, 6)])
def test_shapes(backend, m, n, d):
    _compare(backend, "mult", "mean", *_case(torch.float32, torch.int64, m, n, d))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2], []])
def test_bag_shapes(backend, lengths):
    _compare(backend, "mult", "sum", *_case(torch.float32, torch.int64, 7, 63, 9, lengths=lengths))


def test_composes_before_pooling():
    """Multi-hot "mult": the sum of products, not the product of sums (dlrm's pitfall)."""
    q = torch.tensor([[1.0], [2.0]])
    r = torch.tensor([[3.0], [5.0]])
    values, offsets = torch.tensor([0, 3]), torch.tensor([0, 2])  # ids 0 -> q0 r0, 3 -> q1 r1
    for b in ("reference", "cpu", "triton"):
        out = op_module("qr", b).qr_bag(values.to(DEVICE), offsets.to(DEVICE), q.to(DEVICE), r.to(DEVICE), collisions=2)
        assert out.item() == 1 * 3 + 2 * 5  # pooled first would give (1 + 2) * (3 + 5) = 24


def test_rejects_bad_operation():
    values, offsets, q, r, m, _ = _case(torch.float32, torch.int64, 7, 63, 4)
    for b in ("reference", "cpu", "triton"):
        with pytest.raises(ValueError, match="operation"):
            op_module("qr", b).qr_bag(values, offsets, q, r, collisions=m, operation="concat")
