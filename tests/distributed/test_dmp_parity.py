"""2 gloo ranks: for every embedding method and every sharding type that applies to its
tables, the DMP-sharded model trains exactly like the unsharded one (loss at each of three
optimizer steps, then eval outputs), and every parameter changes.

The reference runs the global batch (2 x local) on one process; each rank runs its half.
TorchRec (like DDP) averages gradients over ranks, so the mean of the ranks' losses is the
reference's loss. Tolerances: losses rtol 1e-5; outputs atol 1e-5 (float32; FBGEMM's fused
rowwise Adagrad and TorchRec's torch RowWiseAdagrad sum in different orders).
CAFE: the sketch is sharded over the ranks (sharding/cafe.py) and must give the same hot
ids as the single-process sketch while no shard runs out of hot slots (each shard hands out
only its own): threshold 3 with count importance promotes the frequent ids at step 2-3.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from compactrec.sharding.env import DistEnv, all_gather_object, spawn
from tests.helpers import slice_batch

STEPS = 3
LOCAL_B = 64
METHOD_OVERRIDES = {
    "full": [],
    "hash": ["compression.ratio=8"],
    "qr": ["compression.ratio=8"],
    "memcom": ["compression.ratio=8"],
    "mixed_dim": ["compression.ratio=4"],
    "cafe": ["compression.ratio=8", "embedding.cafe.threshold=3", "embedding.cafe.importance=count"],
}
# The compactrec.kernels ops each method's sharded training step must run (counted at the
# dispatch point): the composition over TorchRec's looked-up rows, and the id hashing.
KERNEL_OPS = {
    "full": set(),
    "hash": {"hash_remap"},
    "qr": {"qr_compose_pool"},
    "memcom": {"hash_remap", "scale_pool"},
    "mixed_dim": {"project_sum"},
    "cafe": {"hash_remap", "project_sum"},
}
EBC_TYPES = ["table_wise", "row_wise", "column_wise", "table_row_wise"]
EC_TYPES = ["table_wise", "row_wise", "column_wise"]  # unpooled collections: no table_row_wise
TYPES = {"full": EBC_TYPES, "hash": EBC_TYPES, "qr": EC_TYPES, "memcom": EC_TYPES, "mixed_dim": EC_TYPES,
         "cafe": EBC_TYPES}


def _ranks(rank: int, world: int, data: str, method: str, out: str) -> None:
    """One process pair per method: every sharding type in turn (start-up is the slow part)."""
    results = {}
    for sharding in TYPES[method]:
        results[sharding] = _one(rank, world, data, method, sharding)
    if rank == 0:
        torch.save(results, out)


def _one(rank: int, world: int, data: str, method: str, sharding: str):
    from compactrec.embeddings.base import tables_on
    from compactrec.sharding.shard import shard_model
    from compactrec.sharding.state import load_full_state_dict, local_shards
    from compactrec.trainer.config import load_config
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    torch.set_num_threads(1)
    cfg = load_config(None, [f"data.path={data}", "optim.sparse_lr=0.1", "optim.dense_lr=0.05",
                             f"embedding.kind={method}", *METHOD_OVERRIDES[method]])
    manifest = read_manifest(data)
    env = DistEnv(rank, world, rank, torch.device("cpu"))

    ref = build_train_model(cfg, manifest)
    ref_opt = build_optimizer(ref, cfg.optim)
    with tables_on("meta"):  # as the training loop builds it: DMP materialises the shards
        sharded = build_train_model(cfg, manifest, env.device)
    dmp = shard_model(sharded, [sharding], {}, env)
    load_full_state_dict(dmp, ref.state_dict())
    opt = build_optimizer(dmp, cfg.optim)
    before = local_shards(dmp)

    reader = ParquetReader(manifest.split_files(data, "train"), manifest.schema, LOCAL_B * world)
    batches = iter(reader.epoch(0))
    from compactrec.kernels import calls

    ref_losses, losses = [], []
    kernel_calls: Counter = Counter()  # ops of compactrec.kernels run by the DMP steps alone
    for _ in range(STEPS):
        batch = next(batches)
        loss, _ = ref(batch)
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
        ref_losses.append(float(loss))
        before_step = Counter(calls())
        loss, _ = dmp(slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B))
        opt.zero_grad()
        loss.backward()
        opt.step()
        kernel_calls.update({op: n for (op, _backend), n in (Counter(calls()) - before_step).items()})
        losses.append(sum(all_gather_object(float(loss))) / world)

    batch = next(batches)
    ref.eval()
    dmp.eval()
    with torch.no_grad():
        _, (_, ref_logits, _) = ref(batch)
        _, (_, logits, _) = dmp(slice_batch(batch, rank * LOCAL_B, (rank + 1) * LOCAL_B))
    logits = torch.cat(all_gather_object(logits))
    after = local_shards(dmp)
    # trainable state: floating tensors (ids maps and the sketch are integer buffers / not trained)
    changed = {k: bool((after[k] != before[k]).any()) for k in before
               if after[k].numel() and after[k].is_floating_point() and ".sketch." not in k}
    gathered = all_gather_object(changed)
    hot = None
    if method == "cafe":
        emb = ref.model.sparse_arch.embedding_bag_collection
        emb.flush()
        ref_hot = set(emb.sketch.hot_keys()[0].tolist())
        demb = dmp.module.model.sparse_arch.embedding_bag_collection
        demb.flush()
        dist_hot = set().union(*all_gather_object(set(demb.sketch.hot_keys()[0].tolist())))
        hot = (ref_hot, dist_hot)
    anywhere = {k: any(g.get(k, False) for g in gathered) for k in set().union(*gathered)}
    return {"ref": ref_losses, "dmp": losses, "changed": anywhere, "ref_logits": ref_logits,
            "logits": logits, "hot": hot, "kernels": dict(kernel_calls)}


@pytest.mark.distributed
@pytest.mark.parametrize("method", list(TYPES))
def test_sharded_matches_unsharded_and_every_parameter_moves(all_multihot_data: Path, tmp_path: Path, method):
    out = tmp_path / "result.pt"
    spawn(_ranks, 2, str(all_multihot_data), method, str(out))
    results = torch.load(out, weights_only=False)
    assert list(results) == TYPES[method]
    for sharding, result in results.items():
        where = f"{method} sharded {sharding}"
        torch.testing.assert_close(torch.tensor(result["dmp"]), torch.tensor(result["ref"]), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{where}: losses differ: {m}")
        torch.testing.assert_close(result["logits"], result["ref_logits"], rtol=1e-4, atol=1e-5,
                                   msg=lambda m: f"{where}: outputs differ: {m}")
        ran = {op for op, n in result["kernels"].items() if n > 0}
        assert KERNEL_OPS[method] <= ran, f"{where}: the DMP step ran kernels {ran}, expected {KERNEL_OPS[method]}"
        frozen = [k for k, moved in result["changed"].items() if not moved]
        assert not frozen, f"{where}: parameters that did not change after {STEPS} steps: {frozen}"
        tables = [k for k in result["changed"] if k.endswith(".weight") and "sparse_arch" in k]
        assert tables, f"{where}: no embedding tables found"
        if method == "cafe":
            ref_hot, dist_hot = result["hot"]
            assert ref_hot and ref_hot == dist_hot, f"{where}: hot ids differ from the single-process sketch"
