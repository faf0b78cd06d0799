"""project_sum: Triton (interpreted) and CPU paths against the reference, forward and gradients."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.cases import DEVICE, assert_same, leaf, op_module, run

D = 20
# (block widths, which blocks project) with output width D
LAYOUTS = {
    "mixed": ([D, 5, 1, 13], [False, True, True, True]),  # identity first, a width-1 block, odd widths
    "one_projected": ([7], [True]),
    "one_identity": ([D], [False]),
    "cafe": ([D, D, D], [False, False, False]),  # hot table + two hash levels: all identity
    "wide": ([70, 33], [True, True]),  # d_k wider than the output, more than one K-chunk
    "many": ([3, D, 17, 1, 40, D, 9], [True, False, True, True, True, False, True]),  # > 4 slots: 2 launches
}


def _case(dtype, layout, b=37, seed=6, p_dtype=None):
    gen = torch.Generator().manual_seed(seed)
    widths, proj = LAYOUTS[layout]
    blocks = [leaf((b, w), dtype, gen) for w in widths]
    projs = [leaf((w, D), p_dtype or dtype, gen) if p else None for w, p in zip(widths, proj)]
    grad_out = torch.randn((b, D), generator=gen).to(dtype).to(DEVICE)
    return blocks, projs, grad_out


def _compare(backend, blocks, projs, grad_out):
    present = [p for p in projs if p is not None]
    names = ["out"] + [f"block{k}" for k in range(len(blocks))]
    names += [f"proj{k}" for k, p in enumerate(projs) if p is not None]

    def call(mod):
        out, grads = run(lambda: mod.project_sum(blocks, projs), blocks + present, grad_out)
        return (out, *grads)

    want = call(op_module("projection", "reference"))
    got = call(op_module("projection", backend))
    assert_same(got, want, names, blocks[0].dtype)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_matches_reference(backend, dtype, layout):
    _compare(backend, *_case(dtype, layout))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
@pytest.mark.parametrize("b", [0, 1, 130])  # no rows; one row; more than one row tile (64)
def test_rows(backend, b):
    _compare(backend, *_case(torch.float32, "mixed", b=b))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_fp32_projections_of_bf16_blocks(backend):
    """Mixed dtypes take the fp32 dot; output in blocks[0]'s dtype, gradients in their own."""
    _compare(backend, *_case(torch.bfloat16, "mixed", p_dtype=torch.float32))


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_wide_output(backend):
    """d > 128: more than one column tile."""
    gen = torch.Generator().manual_seed(7)
    blocks = [leaf((9, 24), torch.float32, gen), leaf((9, 150), torch.float32, gen)]
    projs = [leaf((24, 150), torch.float32, gen), None]
    _compare(backend, blocks, projs, torch.randn(9, 150, generator=gen).to(DEVICE))


def test_frozen_projection_skips_its_gradient():
    blocks, projs, g = _case(torch.float32, "mixed")
    frozen = [p.detach() if p is not None else None for p in projs]
    outs = [op_module("projection", b).project_sum(blocks, frozen) for b in ("triton", "reference")]
    got, want = (torch.autograd.grad(o, blocks, g) for o in outs)
    for a, w in zip(got, want):
        torch.testing.assert_close(a, w, atol=1e-5, rtol=1e-5)


def test_lone_identity_is_not_the_input():
    x = torch.randn(3, 4, device=DEVICE)
    for b in ("reference", "cpu", "triton"):
        out = op_module("projection", b).project_sum([x], [None])
        assert out is not x and torch.equal(out, x)


def test_rejects_bad_shapes():
    x, y = torch.randn(4, 6), torch.randn(4, 3)
    bad = {
        "different widths": ([x, y], [None, None]),
        "projection 1": ([x, y], [None, torch.randn(4, 6)]),
        "same B": ([x, torch.randn(5, 6)], [None, None]),
        "K >= 1": ([], []),
        "2 blocks and 1": ([x, y], [None]),
    }
    for b in ("reference", "cpu", "triton"):
        for match, (blocks, projs) in bad.items():
            with pytest.raises(ValueError, match=match):
                op_module("projection", b).project_sum(blocks, projs)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_blocks_as_column_slices(backend):
    """Blocks sliced out of one pooled (B, sum d_k) tensor (a KeyedTensor's values): row stride != d_k."""
    gen = torch.Generator().manual_seed(13)
    pooled = leaf((21, D + 5 + 13), torch.float32, gen)
    projs = [None, leaf((5, D), torch.float32, gen), leaf((13, D), torch.float32, gen)]
    g = torch.randn(21, D, generator=gen).to(DEVICE)

    def call(mod):
        blocks = [pooled[:, :D], pooled[:, D : D + 5], pooled[:, D + 5 :]]
        out, grads = run(lambda: mod.project_sum(blocks, projs), [pooled, projs[1], projs[2]], g)
        return (out, *grads)
    assert_same(call(op_module("projection", backend)), call(op_module("projection", "reference")),
                ["out", "pooled", "proj1", "proj2"], torch.float32)
