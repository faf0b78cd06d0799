"""``reserve_unseen`` under DMP (2 gloo ranks, row-wise and table-wise): TorchRec initialises
the sharded tables at random, ``shard_model`` then sets every reserved row to 0 on the rank
that holds it (embeddings/reserved.py), so a never-seen id's embedding is exactly 0 in the
sharded forward, as in the unsharded one, while the other rows keep their random init (ROBE: its arrays' reserved table row)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compactrec.sharding.env import DistEnv, all_gather_object, spawn

CASES = ("hash", "qr", "cafe", "robe")


def _ranks(rank: int, world: int, data: str, out: str) -> None:
    from torch.distributed._shard.sharded_tensor import ShardedTensor

    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.embeddings.base import tables_on
    from compactrec.embeddings.reserved import _weights
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.loop import build_train_model

    torch.set_num_threads(1)
    manifest = read_manifest(data)
    env = DistEnv(rank, world, rank, torch.device("cpu"))
    results = {}
    for kind in CASES:
        for sharding in ("row_wise", "table_wise"):
            cfg = load_config(None, [f"data.path={data}", f"embedding.kind={kind}", "compression.ratio=8",
                                     f"embedding.{kind}.reserve_unseen=true"])
            with tables_on("meta"):
                model = build_train_model(cfg, manifest, env.device)
            dmp = shard_model(model, [sharding], {}, env)
            emb = dmp.module.model.sparse_arch.embedding_bag_collection
            weights = _weights(emb)
            rows, others = {}, {}
            for table, row in emb.reserved_rows().items():
                w = weights[table]
                shards = [(s.metadata.shard_offsets[0], s.tensor) for s in w.local_shards()] \
                    if isinstance(w, ShardedTensor) else [(0, w.detach())]
                for r0, t in shards:
                    if r0 <= row < r0 + t.shape[0]:
                        rows[table] = float(t[row - r0].abs().sum())
                        others[table] = float(t.abs().sum())  # the shard's other rows: random, not 0
            reader = ParquetReader(manifest.split_files(data, "train"), manifest.schema, 16)
            batch = next(iter(reader.epoch(0)))
            dmp.eval()  # nothing was trained: every id is new
            with torch.no_grad():
                pooled = emb(batch.sparse_features).to_dict()
            # features whose new ids must embed to 0: one per reserved table, ROBE's every array feature
            compressed = len(emb.big) if kind == "robe" else len(emb.reserved_rows())
            results[(kind, sharding)] = {"rows": rows, "others": others, "tables": list(emb.reserved_rows()),
                                         "compressed": compressed,
                                         "out_abs": {k: float(v.abs().sum()) for k, v in pooled.items()}}
    gathered = all_gather_object(results)
    if rank == 0:
        torch.save(gathered, out)


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_reserved_rows_are_zero_after_sharding(tiny_data: Path, tmp_path: Path):
    out = tmp_path / "r.pt"
    spawn(_ranks, 2, str(tiny_data), str(out))
    per_rank = torch.load(out, weights_only=False)
    for key in per_rank[0]:
        tables = per_rank[0][key]["tables"]
        assert tables, key
        found = {t: r[key]["rows"][t] for r in per_rank for t in r[key]["rows"]}
        assert set(found) == set(tables), (key, found)  # every reserved row lives on some rank
        assert all(v == 0.0 for v in found.values()), (key, found)
        others = {t: r[key]["others"][t] for r in per_rank for t in r[key]["others"]}
        assert all(v > 0 for v in others.values()), (key, others)  # TorchRec's init ran
        for r in per_rank:
            outs = r[key]["out_abs"]
            # a compressed feature's output for new ids is exactly 0 (small features: full tables)
            # (CAFE: no id is hot yet, so new ids read their hash rows' reserved rows)
            zero = [f for f, v in outs.items() if v == 0.0]
            assert len(zero) == r[key]["compressed"], (key, outs, tables)
