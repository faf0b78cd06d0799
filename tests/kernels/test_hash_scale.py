"""hash_scale_bag: Triton (interpreted) and CPU paths against the reference, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from compactrec.hashing import hash_mod
from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, make_values, offsets_of, op_module, run

N, M, SEED = 500, 17, 3  # entities, hashed rows, hash seed


def _case(dtype, id_dtype, hashed, with_scale, with_bias, d, lengths=LENGTHS, num_rows=None, seed=1):
    gen = torch.Generator().manual_seed(seed)
    m = num_rows or M
    if hashed:  # an id that lands on the table's last row
        last = int(torch.nonzero(hash_mod(torch.arange(N), m, SEED) == m - 1)[0])
        values = make_values(lengths, N, [last, N - 1], gen, id_dtype)
    else:
        values = make_values(lengths, m, [m - 1], gen, id_dtype)
    table = leaf((M, d), dtype, gen)
    scale = leaf((N + 3,), dtype, gen, around=1.0) if with_scale else None
    bias = leaf((N + 3,), dtype, gen) if with_bias else None
    grad_out = torch.randn((len(lengths), d), generator=gen).to(dtype).to(DEVICE)
    return values, offsets_of(lengths), table, scale, bias, grad_out


def _compare(backend, mode, values, offsets, table, scale, bias, grad_out, **kw):
    params = [p for p in (table, scale, bias) if p is not None]
    names = ["out"] + [n for n, p in zip(("table", "scale", "bias"), (table, scale, bias)) if p is not None]

    def call(mod):
        fn = lambda: mod.hash_scale_bag(values, offsets, table, scale, bias, seed=SEED, mode=mode, **kw)  # noqa: E731
        out, grads = run(fn, params, grad_out)
        return (out, *grads)

    want = call(op_module("hash_scale", "reference"))
    got = call(op_module("hash_scale", backend))
    assert_same(got, want, names, table.dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize(
    "hashed,with_scale,with_bias", [(True, True, True), (True, False, False), (False, True, False)]
)
def test_matches_reference(backend, dtype, id_dtype, mode, hashed, with_scale, with_bias):
    case = _case(dtype, id_dtype, hashed, with_scale, with_bias, d=13)
    _compare(backend, mode, *case, hashed=hashed)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("d", [1, 300])  # one column; wider than one column block (256)
def test_widths(backend, d):
    _compare(backend, "mean", *_case(torch.float32, torch.int64, True, True, True, d=d))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2]])  # all empty; one-hot; very long
def test_bag_shapes(backend, lengths):
    _compare(backend, "sum", *_case(torch.float32, torch.int64, True, True, True, d=7, lengths=lengths))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_num_rows_hashes_into_a_prefix(backend):
    """num_rows < table rows: ids hash into the first num_rows rows; the rest get zero gradient."""
    case = _case(torch.float32, torch.int64, True, True, False, d=5, num_rows=11)
    _compare(backend, "sum", *case, num_rows=11)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_no_bags(backend):
    case = _case(torch.float32, torch.int64, True, True, True, d=4, lengths=[])
    _compare(backend, "sum", *case)


def test_scale_and_bias_optional_gradients():
    """Only the table requires grad: the kernels skip the scale and bias gradients."""
    values, offsets, table, scale, bias, g = _case(torch.float32, torch.int64, True, True, True, d=6)
    mod = op_module("hash_scale", "triton")
    out = mod.hash_scale_bag(values, offsets, table, scale.detach(), bias.detach(), seed=SEED)
    (gt,) = torch.autograd.grad(out, [table], g)
    ref_mod = op_module("hash_scale", "reference")
    ref = ref_mod.hash_scale_bag(values, offsets, table, scale.detach(), bias.detach(), seed=SEED)
    torch.testing.assert_close(gt, torch.autograd.grad(ref, [table], g)[0], atol=1e-5, rtol=1e-5)


def test_rejects_bad_mode():
    values, offsets, table, *_ = _case(torch.float32, torch.int64, True, False, False, d=4)
    for b in ("reference", "cpu", "triton"):
        with pytest.raises(ValueError, match="mode"):
            op_module("hash_scale", b).hash_scale_bag(values, offsets, table, mode="max")
