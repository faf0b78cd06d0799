"""DotInteraction against TorchRec's InteractionArch: same output, same gradients."""

from __future__ import annotations

import pytest
import torch
from torchrec.models.dlrm import InteractionArch

from compactrec.trainer.interaction import DotInteraction
from compactrec.trainer.pairwise_dots import PairwiseDots, upper_pairs


def _run(arch, dense, sparse, grad):
    d, s = dense.clone().requires_grad_(), sparse.clone().requires_grad_()
    out = arch(d, s)
    out.backward(grad)
    return out, d.grad, s.grad


@pytest.mark.parametrize("b, f, d", [(7, 26, 32), (5, 1, 4), (3, 4, 8)])
def test_matches_torchrecs_interaction_forward_bit_for_bit_and_gradients_to_rounding(b, f, d):
    g = torch.Generator().manual_seed(f)
    dense, sparse = torch.randn(b, d, generator=g), torch.randn(b, f, d, generator=g)
    grad = torch.randn(b, d + f * (f + 1) // 2, generator=g)
    ref = _run(InteractionArch(f), dense, sparse, grad)
    ours = _run(DotInteraction(f), dense, sparse, grad)
    assert ours[0].shape == ref[0].shape
    assert torch.equal(ours[0], ref[0])  # same bmm, same pairs, same order
    for a, r in zip(ours[1:], ref[1:]):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_pairwise_dots_backward_is_the_true_gradient():
    """float64 finite differences; a backward missing dG's transpose (or the scatter's
    positions) fails this."""
    c = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: PairwiseDots.apply(x, upper_pairs(5)), (c,))


def test_no_sparse_features_passes_dense_through():
    dense = torch.randn(4, 8)
    assert torch.equal(DotInteraction(0)(dense, torch.empty(4, 0, 8)), dense)


def test_the_trainers_dlrm_uses_it_and_keeps_torchrecs_state_dict():
    """build_model's DLRM carries DotInteraction; its state dict has the keys TorchRec's DLRM
    has (the interaction adds no persistent state), so checkpoints load either way."""
    from torchrec.models.dlrm import DLRM
    from torchrec.modules.embedding_configs import EmbeddingBagConfig
    from torchrec.modules.embedding_modules import EmbeddingBagCollection

    from compactrec.trainer.config import ModelConfig
    from compactrec.trainer.model import build_model

    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=8, num_embeddings=10, feature_names=[f"f{i}"]) for i in range(3)]
    cfg = ModelConfig(embedding_dim=8, dense_arch=[8], over_arch=[4, 1])
    model = build_model(cfg, EmbeddingBagCollection(tables=tables), num_dense=2)
    assert isinstance(model.model.inter_arch, DotInteraction)
    plain = DLRM(embedding_bag_collection=EmbeddingBagCollection(tables=tables), dense_in_features=2,
                 dense_arch_layer_sizes=[8], over_arch_layer_sizes=[4, 1])
    assert set(model.model.state_dict()) == set(plain.state_dict())
