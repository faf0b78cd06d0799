"""``reserve_unseen`` under DMP: every rank's seen-id bits OR-ed (sharding/seen_sync.py), by
gloo's BOR and by NCCL's unpack-and-MAX path (run here on gloo), and in a 2-worker run the
bits count every id either rank trained."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from compactrec.sharding.env import all_gather_object, spawn

REPO = Path(__file__).resolve().parents[2]
# ids of each rank: the sign bit (63), a word boundary (64), both ranks (5), one rank only
IDS = {0: [0, 5, 63, 64, 200], 1: [5, 7, 127, 128, 199]}


def _ranks(rank: int, world: int, out: str) -> None:
    from compactrec.embeddings.seen import SeenIds
    from compactrec.sharding.seen_sync import or_across_ranks, seen_count, sync_seen

    got = {}
    for planes in (False, True):
        seen = SeenIds([150, 60])  # 210 ids over 4 words
        seen.mark(torch.tensor(IDS[rank]))
        or_across_ranks(seen.bits, planes=planes)
        got[planes] = seen.bits.clone()
    model = torch.nn.Sequential(SeenIds([210]))
    model[0].mark(torch.tensor(IDS[rank]))
    merged = sync_seen(model)
    result = {"bits": got, "known": model[0].known(torch.arange(210)).nonzero().squeeze(1).tolist(),
              "merged": merged, "count": seen_count(model)}
    results = all_gather_object(result)
    if rank == 0:
        torch.save(results, out)


@pytest.mark.distributed
def test_bits_are_or_ed_over_ranks_by_both_paths(tmp_path: Path):
    out = tmp_path / "r.pt"
    spawn(_ranks, 2, str(out))
    results = torch.load(out, weights_only=False)
    union = sorted(set(IDS[0]) | set(IDS[1]))
    for r in results:
        torch.testing.assert_close(r["bits"][True], r["bits"][False], rtol=0, atol=0)  # NCCL's path == BOR
        assert r["known"] == union and r["merged"] == 1 and r["count"] == len(union)
    torch.testing.assert_close(results[0]["bits"][False], results[1]["bits"][False], rtol=0, atol=0)


@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_two_workers_know_every_id_either_trained(tiny_data: Path, tmp_path: Path):
    """hash with reserve_unseen (bits over every feature), one epoch on 2 workers: each rank
    reads half the rows; the final bits hold the distinct ids of ALL train rows."""
    r = subprocess.run(
        [sys.executable, "-m", "compactrec", "train", "configs/methods/hash.yaml", f"data.path={tiny_data}",
         f"runs_dir={tmp_path}", "name=seen", "trainer.launcher=local", "cluster.num_workers=2", "trainer.epochs=1",
         "embedding.hash.reserve_unseen=true", "trainer.progress_bar=false", "trainer.tensorboard=false",
         "data.batch_size=128", "data.eval_batch_size=512"],
        cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    m = json.loads((tmp_path / "seen" / "latest" / "metrics.json").read_text())
    table = pq.read_table(sorted((tiny_data / "train").glob("*.parquet")))
    want = sum(len(np.unique(table.column(name).to_numpy())) for name in table.column_names if name.startswith("cat_"))
    assert m["samples"] >= table.num_rows  # one full epoch over both ranks
    assert m["seen_ids"] == want, (m["seen_ids"], want)
