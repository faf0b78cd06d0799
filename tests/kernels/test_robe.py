"""robe_bag / robe_rows: Triton (interpreted) and CPU paths against the reference, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, make_values, offsets_of, op_module, run

N, R = 500, 23  # ids, array rows
MULT_ID, MULT_BLOCK = 1_103_515_245, 12_345_679  # arbitrary constants in [1, P)


def _case(dtype, id_dtype, z, dim, lengths=LENGTHS, seed=1, rows=R):
    gen = torch.Generator().manual_seed(seed)
    values = make_values(lengths, N, [N - 1, 0], gen, id_dtype)
    p = op_module("robe", "reference").P
    bases = torch.randint(0, p, (values.numel(),), generator=gen, dtype=torch.int64).to(DEVICE)
    array = leaf((rows, z), dtype, gen)
    grad_out = torch.randn((len(lengths), dim), generator=gen).to(dtype).to(DEVICE)
    return values, offsets_of(lengths), bases, array, grad_out


def _compare(backend, mode, values, offsets, bases, array, grad_out):
    def call(mod):
        fn = lambda: mod.robe_bag(values, offsets, bases, array, dim=grad_out.shape[1], mult_id=MULT_ID,  # noqa: E731
                                  mult_block=MULT_BLOCK, mode=mode)
        out, grads = run(fn, [array], grad_out)
        return (out, *grads)

    want = call(op_module("robe", "reference"))
    got = call(op_module("robe", backend))
    assert_same(got, want, ["out", "array"], array.dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("id_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("z,dim", [(1, 7), (4, 12), (12, 12)])  # element-wise; 3 chunks; one chunk per id
def test_matches_reference(backend, dtype, id_dtype, mode, z, dim):
    _compare(backend, mode, *_case(dtype, id_dtype, z, dim))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("z,dim", [(3, 300), (300, 300)])  # wider than one column block (256)
def test_widths(backend, z, dim):
    _compare(backend, "mean", *_case(torch.float32, torch.int64, z, dim))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2], []])  # all empty; one-hot; long; none
def test_bag_shapes(backend, lengths):
    _compare(backend, "sum", *_case(torch.float32, torch.int64, 2, 6, lengths=lengths))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_rows_bit_for_bit(backend):
    values, _, bases, *_ = _case(torch.float32, torch.int64, 2, 10, rows=1_000_003)
    kw = dict(num_blocks=5, num_rows=1_000_003, mult_id=MULT_ID, mult_block=MULT_BLOCK)
    want = op_module("robe", "reference").robe_rows(values, bases, **kw)
    got = op_module("robe", backend).robe_rows(values, bases, **kw)
    assert torch.equal(got, want)
    assert int(want.min()) >= 0 and int(want.max()) < 1_000_003


def test_hash_is_the_papers_formula():
    """Row of chunk c of id x = ((base + B x + C c) mod P) mod R, computed here in Python ints."""
    ref = op_module("robe", "reference")
    ids = torch.tensor([0, 1, 7, 2**40 + 3, 499], dtype=torch.int64)
    bases = torch.tensor([5, ref.P - 1, 0, 123456789, 42], dtype=torch.int64)
    rows = ref.robe_rows(ids, bases, num_blocks=3, num_rows=97, mult_id=MULT_ID, mult_block=MULT_BLOCK)
    for j, (x, base) in enumerate(zip(ids.tolist(), bases.tolist())):
        for c in range(3):
            assert int(rows[j, c]) == (base + MULT_ID * x + MULT_BLOCK * c) % ref.P % 97


def test_rejects_bad_inputs():
    values, offsets, bases, array, _ = _case(torch.float32, torch.int64, 4, 8)
    for b in ("reference", "cpu", "triton"):
        mod = op_module("robe", b)
        with pytest.raises(ValueError, match="multiple of the block"):
            mod.robe_bag(values, offsets, bases, array, dim=6, mult_id=1, mult_block=1)
        with pytest.raises(ValueError, match="mode"):
            mod.robe_bag(values, offsets, bases, array, dim=8, mult_id=1, mult_block=1, mode="max")
