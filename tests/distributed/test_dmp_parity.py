"""2 gloo ranks: the DMP-sharded DLRM trains exactly like the unsharded one, and every
trainable parameter (each embedding table included) changes after a step.

The reference runs the global batch (2 x local) on one process; each rank runs its half.
TorchRec (like DDP) averages gradients over ranks, so the global mean loss is the
reference's loss. Tolerance: 1e-5 relative on the loss (float32, different summation order
in FBGEMM's fused rowwise Adagrad vs TorchRec's torch RowWiseAdagrad).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compactrec.sharding.env import DistEnv, all_gather_object, spawn
from tests.helpers import slice_batch

STEPS = 3
LOCAL_B = 64


def _ranks(rank: int, world: int, data: str, types: list, out: str) -> None:
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict, local_shards
    from compactrec.trainer.config import load_config
    from compactrec.trainer.data.manifest import read_manifest
    from compactrec.trainer.data.reader import ParquetReader
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "optim.sparse_lr=0.1", "optim.dense_lr=0.05"])
    manifest = read_manifest(data)
    env = DistEnv(rank, world, rank, torch.device("cpu"))

    ref = build_train_model(cfg, manifest)
    ref_opt = build_optimizer(ref, cfg.optim)
    dmp = shard_model(build_train_model(cfg, manifest), types, {}, env)
    load_full_state_dict(dmp, ref.state_dict())
    opt = build_optimizer(dmp, cfg.optim)
    before = local_shards(dmp)

    reader = ParquetReader(manifest.split_files(data, "train"), manifest.schema, LOCAL_B * world)
    ref_losses, losses = [], []
    for step, batch in enumerate(reader.epoch(0)):
        if step == STEPS:
            break
        loss, _ = ref(batch)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss))

        local = slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B)
        loss, _ = dmp(local)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(sum(all_gather_object(float(loss))) / world)

    after = local_shards(dmp)
    changed = {k: bool((after[k] != before[k]).any()) for k in before if after[k].numel()}
    gathered = all_gather_object(changed)
    if rank == 0:
        anywhere = {k: any(g.get(k, False) for g in gathered) for k in before}
        torch.save({"ref": ref_losses, "dmp": losses, "changed": anywhere}, out)


@pytest.mark.distributed
@pytest.mark.parametrize("types", [["table_wise"], ["row_wise"], ["column_wise"], ["table_row_wise"]])
def test_sharded_matches_unsharded_and_every_parameter_moves(tiny_data: Path, tmp_path: Path, types):
    out = tmp_path / "result.pt"
    spawn(_ranks, 2, str(tiny_data), types, str(out))
    result = torch.load(out)
    assert len(result["dmp"]) == STEPS
    torch.testing.assert_close(
        torch.tensor(result["dmp"]), torch.tensor(result["ref"]), rtol=1e-5, atol=1e-6
    )
    frozen = [k for k, moved in result["changed"].items() if not moved]
    assert not frozen, f"parameters that did not change after {STEPS} steps: {frozen}"
    tables = [k for k in result["changed"] if "embedding_bags" in k]
    assert len(tables) == 26, tables
