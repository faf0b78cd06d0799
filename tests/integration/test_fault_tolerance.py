"""Checkpoints and failures: a worker killed mid-run under Ray is replaced and the run ends
bitwise equal to an uninterrupted one; a run saved on 2 workers resumes on 1 (and 1 -> 2)
with the same eval metrics right after the load; a damaged checkpoint is skipped and the
previous one gives the same final weights."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512"]


def _train(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "compactrec", "train", "configs/methods/cafe.yaml", *TINY, *args],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    return r


def _metrics(runs: Path, name: str) -> dict:
    return json.loads((runs / name / "latest" / "metrics.json").read_text())


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_killed_worker_is_replaced_and_the_run_ends_bitwise_equal(tiny_data: Path, tmp_path: Path):
    common = [f"data.path={tiny_data}", f"runs_dir={tmp_path}", "cluster.num_workers=2", "trainer.checkpoint_every=4"]
    _train(*common, "name=clean", "trainer.launcher=local")
    r = _train(*common, "name=faulty", "trainer.launcher=ray", "trainer.fault_at_step=6", "trainer.max_failures=1")
    assert "fault injection: rank 1 exits at step 6" in r.stdout + r.stderr
    assert "resumed from" in r.stdout + r.stderr and "at step 4" in r.stdout + r.stderr
    clean, faulty = _metrics(tmp_path, "clean"), _metrics(tmp_path, "faulty")
    assert faulty["resumed_from"] and not clean["resumed_from"]
    assert faulty["weights_digest"] == clean["weights_digest"]  # bitwise: tables, dense, sketch
    for key in ("auc", "logloss", "ne", "steps", "samples"):
        assert faulty[key] == clean[key], key


@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_a_failed_ray_run_names_the_rank_node_and_step(tiny_data: Path, tmp_path: Path):
    r = subprocess.run([sys.executable, "-m", "compactrec", "train", "configs/methods/hash.yaml", *TINY,
                        f"data.path={tiny_data}", f"runs_dir={tmp_path}", "name=dies", "cluster.num_workers=2",
                        "trainer.launcher=ray", "trainer.fault_at_step=3", "trainer.max_failures=0"],
                       cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 2, r.stderr[-3000:]
    error = [line for line in r.stderr.splitlines() if line.startswith("compactrec train: error:")][-1]
    assert re.search(r"rank 1 on node \S+ \(\S+, pid \d+\) died after step 3 ", error), error
    assert re.search(r"rank 0 on node \S+ \(pid \d+\) after step 3 \(epoch 0\)", error), error


@pytest.mark.distributed
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_resume_on_another_number_of_workers(tiny_data: Path, tmp_path: Path, before: int, after: int):
    common = [f"data.path={tiny_data}", f"runs_dir={tmp_path}", "trainer.launcher=local", "trainer.max_steps=8",
              "embedding.cafe.threshold=3", "embedding.cafe.importance=count",
              # room to re-home: the hot table is row-wise over the ranks, so each shard holds
              # half the slots; at the demo's ratio 16 one process fills every slot and a
              # shard whose buckets hold more than half loses the excess (sharding/cafe.py)
              "compression.ratio=4"]
    _train(*common, "name=saved", f"cluster.num_workers={before}")
    _train(*common, "name=resumed", f"cluster.num_workers={after}", f"trainer.resume_from={tmp_path / 'saved' / 'latest' / 'checkpoints'}")
    saved, resumed = _metrics(tmp_path, "saved"), _metrics(tmp_path, "resumed")
    assert resumed["world_size"] == after and resumed["steps"] == saved["steps"] == 8
    # Eval right after the load on the new plan: the same model (tables resharded by DCP,
    # CAFE's hot ids re-homed to the new sketch shards). Tolerance: row-wise pooling sums
    # partial results across ranks, so the last float bit may differ.
    for key in ("auc", "logloss", "ne"):
        assert resumed[key] == pytest.approx(saved[key], rel=1e-6, abs=1e-7), key
    assert saved["cafe_hot_ids"] > 0 and resumed["cafe_hot_digest"] == saved["cafe_hot_digest"]  # same hot ids


def test_a_damaged_checkpoint_is_skipped_and_the_run_ends_as_an_uninterrupted_one(tiny_data: Path, tmp_path: Path, capsys):
    from compactrec.trainer.checkpoint import COMPLETE, latest_checkpoint

    common = [f"data.path={tiny_data}", f"runs_dir={tmp_path}", "trainer.launcher=local", "cluster.num_workers=1",
              "trainer.checkpoint_every=4", "trainer.max_steps=8", "trainer.keep_checkpoints=3"]
    _train(*common, "name=run")
    root = (tmp_path / "run" / "latest").resolve() / "checkpoints"
    assert [p.name for p in sorted(root.iterdir())] == ["step_000000004", "step_000000008"]
    data = max((root / "step_000000008").glob("*.distcp"), key=lambda p: p.stat().st_size)
    raw = bytearray(data.read_bytes())
    mid = len(raw) // 2
    raw[mid : mid + 4096] = bytes(b ^ 0x5A for b in raw[mid : mid + 4096])  # 4 KiB scrambled, same size
    data.write_bytes(bytes(raw))
    assert latest_checkpoint(root) == root / "step_000000004"
    assert f"{data.name}: checksum mismatch" in capsys.readouterr().out
    r = _train(*common, "name=again", f"trainer.resume_from={root}")
    out = r.stdout + r.stderr
    assert "skipping checkpoint" in out and "step_000000008" in out and data.name in out  # the warning names the file
    assert f"resumed from {root / 'step_000000004'}" in out
    run, again = _metrics(tmp_path, "run"), _metrics(tmp_path, "again")
    assert again["weights_digest"] == run["weights_digest"]  # steps 5-8 redone exactly
    for key in ("auc", "logloss", "steps", "samples"):
        assert again[key] == run[key], key
    (root / "step_000000004" / COMPLETE).unlink()  # as if the writer died before finishing
    assert latest_checkpoint(root) is None
