"""scale_pool: Triton (interpreted) and CPU paths against the reference, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, offsets_of, op_module, run


def _case(dtype, d, lengths=LENGTHS, with_scale=True, with_bias=True, column=False, seed=4, offsets_dtype=torch.int64):
    gen = torch.Generator().manual_seed(seed)
    nnz = sum(lengths)
    shape = (nnz, 1) if column else (nnz,)  # a (nnz, 1) lookup of a 1-wide table, or flat
    rows = leaf((nnz, d), dtype, gen)
    scale = leaf(shape, dtype, gen, around=1.0) if with_scale else None
    bias = leaf(shape, dtype, gen) if with_bias else None
    grad_out = torch.randn((len(lengths), d), generator=gen).to(dtype).to(DEVICE)
    return rows, offsets_of(lengths).to(offsets_dtype), scale, bias, grad_out


def _compare(backend, mode, rows, offsets, scale, bias, grad_out):
    params = [p for p in (rows, scale, bias) if p is not None]
    names = ["out"] + [n for n, p in zip(("rows", "scale", "bias"), (rows, scale, bias)) if p is not None]

    def call(mod):
        fn = lambda: mod.scale_pool(rows, offsets, scale, bias, mode=mode)  # noqa: E731
        out, grads = run(fn, params, grad_out)
        return (out, *grads)

    want = call(op_module("row_scale", "reference"))
    got = call(op_module("row_scale", backend))
    assert_same(got, want, names, rows.dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("with_scale,with_bias", [(True, True), (True, False), (False, True), (False, False)])
def test_matches_reference(backend, dtype, mode, with_scale, with_bias):
    _compare(backend, mode, *_case(dtype, 13, with_scale=with_scale, with_bias=with_bias))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("d", [1, 300])  # one column; wider than one column block (256)
def test_widths(backend, d):
    _compare(backend, "mean", *_case(torch.float32, d))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2], []])  # empty; one-hot; very long; no bags
def test_bag_shapes(backend, lengths):
    _compare(backend, "sum", *_case(torch.float32, 7, lengths=lengths))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_column_scale_and_int32_offsets(backend):
    """scale / bias as (nnz, 1) (a 1-wide TorchRec lookup) keep their shape in the gradient."""
    _compare(backend, "mean", *_case(torch.bfloat16, 5, column=True, offsets_dtype=torch.int32))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_only_some_gradients(backend):
    """Frozen scale / bias: only the rows' gradient is computed (and it is right)."""
    rows, offsets, scale, bias, g = _case(torch.float32, 6)
    mod, ref = op_module("row_scale", backend), op_module("row_scale", "reference")
    got = torch.autograd.grad(mod.scale_pool(rows, offsets, scale.detach(), bias.detach()), [rows], g)[0]
    want = torch.autograd.grad(ref.scale_pool(rows, offsets, scale.detach(), bias.detach()), [rows], g)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    frozen = rows.detach()  # rows frozen, scale trained
    got = torch.autograd.grad(mod.scale_pool(frozen, offsets, scale), [scale], g)[0]
    want = torch.autograd.grad(ref.scale_pool(frozen, offsets, scale), [scale], g)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    for mode in ("sum", "mean"):  # only the bias trained
        got = torch.autograd.grad(mod.scale_pool(frozen, offsets, scale.detach(), bias, mode=mode), [bias], g)[0]
        want = torch.autograd.grad(ref.scale_pool(frozen, offsets, scale.detach(), bias, mode=mode), [bias], g)[0]
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_composes_per_id():
    """out = sum_j (s_j * rows_j + b_j): the bias is per id (counted once per id), not per bag."""
    rows = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], device=DEVICE)
    scale = torch.tensor([2.0, 0.5, 1.0], device=DEVICE)
    bias = torch.tensor([1.0, 1.0, 10.0], device=DEVICE)
    offsets = torch.tensor([0, 2, 2, 3], device=DEVICE)
    want = torch.tensor([[2 + 1.5 + 2, 4 + 2 + 2], [0.0, 0.0], [15.0, 16.0]])
    for b in ("reference", "cpu", "triton"):
        out = op_module("row_scale", b).scale_pool(rows, offsets, scale, bias)
        torch.testing.assert_close(out.cpu(), want)


def test_rejects_bad_inputs():
    rows, offsets, scale, bias, _ = _case(torch.float32, 4)
    for b in ("reference", "cpu", "triton"):
        mod = op_module("row_scale", b)
        with pytest.raises(ValueError, match="mode"):
            mod.scale_pool(rows, offsets, mode="max")
        with pytest.raises(ValueError, match="scale"):
            mod.scale_pool(rows, offsets, scale[:-1])
        with pytest.raises(ValueError, match="offsets run"):
            mod.scale_pool(rows[:-1], offsets)
        with pytest.raises(ValueError, match="2-D float"):
            mod.scale_pool(rows[:, 0], offsets)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_strided_rows(backend):
    """rows as a column slice of a wider lookup (row stride != d), and a transposed (non-unit column stride) copy."""
    gen = torch.Generator().manual_seed(11)
    nnz = sum(LENGTHS)
    wide = leaf((nnz, 20), torch.float32, gen)
    scale = leaf((nnz,), torch.float32, gen, around=1.0)
    g = torch.randn(len(LENGTHS), 9, generator=gen).to(DEVICE)
    offsets = offsets_of(LENGTHS)
    for rows_of in (lambda w: w[:, 3:12], lambda w: w.t().contiguous().t()[:, :9]):
        def call(mod):
            out, grads = run(lambda: mod.scale_pool(rows_of(wide), offsets, scale, mode="mean"), [wide, scale], g)
            return (out, *grads)
        assert_same(call(op_module("row_scale", backend)), call(op_module("row_scale", "reference")),
                    ["out", "wide", "scale"], torch.float32)
