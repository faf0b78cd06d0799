"""mixed_dim_bag: Triton (interpreted) and CPU paths against the per-id-projection reference."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, LENGTHS, assert_same, leaf, make_values, offsets_of, op_module, run

# (block row counts, block widths, which blocks project) with output width D.
D = 20
LAYOUTS = {
    # identity first block, a 1-row block, a width-1 block, widths not powers of two
    "mixed": ([6, 1, 30, 9], [D, 5, 1, 13], [False, True, True, True]),
    "one_projected": ([40], [7], [True]),
    "one_identity": ([40], [D], [False]),
    "wide": ([3, 50], [70, 33], [True, True]),  # d_k wider than the output
}


def _case(dtype, id_dtype, layout, lengths=LENGTHS, seed=2):
    gen = torch.Generator().manual_seed(seed)
    rows, widths, proj = LAYOUTS[layout]
    bo = [0]
    for n in rows:
        bo.append(bo[-1] + n)
    lasts = [bo[-1] - 1] + [b - 1 for b in bo[1:-1]]  # every block's last row
    values = make_values(lengths, bo[-1], lasts, gen, id_dtype)
    tables = [leaf((n, w), dtype, gen) for n, w in zip(rows, widths)]
    projs = [leaf((w, D), dtype, gen) if p else None for w, p in zip(widths, proj)]
    grad_out = torch.randn((len(lengths), D), generator=gen).to(dtype).to(DEVICE)
    return values, offsets_of(lengths), bo, tables, projs, grad_out


def _compare(backend, mode, values, offsets, bo, tables, projs, grad_out):
    present = [p for p in projs if p is not None]
    names = ["out"] + [f"table{k}" for k in range(len(tables))]
    names += [f"proj{k}" for k, p in enumerate(projs) if p is not None]

    def call(mod):
        fn = lambda: mod.mixed_dim_bag(values, offsets, bo, tables, projs, mode=mode)  # noqa: E731
        out, grads = run(fn, tables + present, grad_out)
        return (out, *grads)

    want = call(op_module("mixed_dim", "reference"))
    got = call(op_module("mixed_dim", backend))
    assert_same(got, want, names, tables[0].dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", ["sum", "mean"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_reference(backend, dtype, mode, layout):
    _compare(backend, mode, *_case(dtype, torch.int64, layout))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("lengths", [[0, 0, 0], [1] * 40, [300, 0, 2], []])  # empty; one-hot; long; no bags
def test_bag_shapes_int32(backend, lengths):
    _compare(backend, "sum", *_case(torch.float32, torch.int32, "mixed", lengths=lengths))


def test_frozen_projection_skips_its_gradient():
    values, offsets, bo, tables, projs, g = _case(torch.float32, torch.int64, "mixed")
    frozen = [p.detach() if p is not None else None for p in projs]
    outs = [op_module("mixed_dim", b).mixed_dim_bag(values, offsets, bo, tables, frozen)
            for b in ("triton", "reference")]
    got, want = (torch.autograd.grad(o, tables, g) for o in outs)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_rejects_inconsistent_blocks():
    values, offsets, bo, tables, projs, _ = _case(torch.float32, torch.int64, "mixed")
    for b in ("reference", "cpu", "triton"):
        with pytest.raises(ValueError, match="block"):
            op_module("mixed_dim", b).mixed_dim_bag(values, offsets, bo[:-1], tables[:-1], projs)
