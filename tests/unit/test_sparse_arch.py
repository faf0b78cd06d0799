"""KeyedSparseArch against TorchRec's SparseArch: same (B, F, D), same gradients, no copy when in order."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchrec.models.dlrm import SparseArch
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor, KeyedTensor

from compactrec.trainer.sparse_arch import KeyedSparseArch

NAMES = ["f0", "f1", "f2"]


def _ebc(seed: int = 0) -> EmbeddingBagCollection:
    torch.manual_seed(seed)
    tables = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=4, num_embeddings=10, feature_names=[n])
              for i, n in enumerate(NAMES)]
    return EmbeddingBagCollection(tables=tables)


def _kjt() -> KeyedJaggedTensor:
    # 3 features x batch 2, one bag empty, one with two ids
    return KeyedJaggedTensor(keys=NAMES, values=torch.tensor([1, 2, 3, 9, 4, 5]),
                             lengths=torch.tensor([2, 1, 0, 1, 1, 1]))


def _grads(arch: nn.Module, g: torch.Tensor):
    arch.zero_grad()
    out = arch(_kjt())
    out.backward(g)
    return out, [p.grad.clone() for p in arch.parameters()]


def test_in_order_is_torchrecs_output_and_gradients_bit_for_bit_without_the_round_trip(monkeypatch):
    g = torch.randn(2, 3, 4)
    ref_out, ref_grads = _grads(SparseArch(_ebc()), g)
    monkeypatch.setattr(KeyedTensor, "to_dict", lambda self: pytest.fail("in order: no split + cat"))
    out, grads = _grads(KeyedSparseArch(_ebc()), g)
    assert out.shape == (2, 3, 4) and torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


class _Reordered(nn.Module):
    """An embedding module whose KeyedTensor lists the features in another order."""

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.ebc = ebc

    def embedding_bag_configs(self):
        return self.ebc.embedding_bag_configs()

    def forward(self, kjt: KeyedJaggedTensor) -> KeyedTensor:
        d = self.ebc(kjt).to_dict()
        order = ["f2", "f0", "f1"]
        return KeyedTensor(keys=order, length_per_key=[4, 4, 4], values=torch.cat([d[k] for k in order], dim=1))


def test_another_key_order_takes_torchrecs_path():
    g = torch.randn(2, 3, 4)
    ref_out, ref_grads = _grads(SparseArch(_ebc()), g)
    out, grads = _grads(KeyedSparseArch(_Reordered(_ebc())), g)
    assert torch.equal(out, ref_out)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


@pytest.mark.parametrize("arch", ["dlrm", "dcn"])
def test_the_trainers_models_use_it_and_keep_torchrecs_state_dict(arch):
    from torchrec.models.dlrm import DLRM, DLRM_DCN

    from compactrec.trainer.config import ModelConfig
    from compactrec.trainer.model import build_model

    cfg = ModelConfig(arch=arch, embedding_dim=4, dense_arch=[4], over_arch=[4, 1])
    model = build_model(cfg, _ebc(), num_dense=2)
    assert isinstance(model.model.sparse_arch, KeyedSparseArch)
    kw = dict(embedding_bag_collection=_ebc(), dense_in_features=2, dense_arch_layer_sizes=[4], over_arch_layer_sizes=[4, 1])
    plain = DLRM(**kw) if arch == "dlrm" else DLRM_DCN(**kw, dcn_num_layers=cfg.dcn_num_layers,
                                                        dcn_low_rank_dim=cfg.dcn_low_rank_dim)
    assert set(model.model.state_dict()) == set(plain.state_dict())


def test_torchrecs_train_pipeline_traces_and_trains_the_trainers_full_model(tiny_data, one_rank_group):
    """TrainPipelineSparseDist traces the model with torch.fx (the key check is a wrapped leaf)
    and its steps equal the plain loop's on the same batches, parameters included."""
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.env import DistEnv
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer
    from compactrec.trainer.pipeline import sparse_dist_pipeline

    cfg = load_config(None, [f"data.path={tiny_data}", "embedding.kind=full"])
    manifest = read_manifest(tiny_data)
    env = DistEnv(0, 1, 0, torch.device("cpu"))

    def sharded():
        with tables_on("meta"):
            model = shard_model(build_train_model(cfg, manifest, env.device), cfg.sharding.types, {}, env)
        return model, build_optimizer(model, cfg.optim)

    (plain, plain_opt), (piped, piped_opt) = sharded(), sharded()
    pipe = sparse_dist_pipeline(piped, piped_opt, env.device)
    assert pipe is not None
    batches = list(ParquetReader(manifest.split_files(tiny_data, "train"), manifest.schema, 256).epoch(0))[:4]
    want = []
    for b in batches:
        loss, _ = plain(b)
        plain_opt.zero_grad()
        loss.backward()
        plain_opt.step()
        want.append(float(loss.detach()))
    it = iter(batches)
    got = [float(pipe.progress(it)[0]) for _ in batches]
    assert got == want
    for (name, a), (_, b) in zip(plain.state_dict().items(), piped.state_dict().items()):
        a = a.local_tensor() if hasattr(a, "local_tensor") else a
        b = b.local_tensor() if hasattr(b, "local_tensor") else b
        assert torch.equal(a, b), name
