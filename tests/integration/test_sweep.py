"""A config-declared sweep runs every reachable point and collects one results table (CSV,
Markdown, PNG); a point whose ratio its method cannot reach is rejected before any worker
starts, listed as unreachable, and does not make the sweep fail. On Ray the points are Ray
Tune trials, each a Ray Train run."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import pytest

from compactrec.cli import main

REPO = Path(__file__).resolve().parents[2]
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.checkpoint_every=-1",
        "data.batch_size=128", "data.eval_batch_size=512"]


def _rows(out: Path) -> dict:
    rows = list(csv.DictReader((out / "results.csv").open()))
    return {(r["embedding.kind"], r["compression.ratio"]): r for r in rows}


def test_sweep_with_an_unreachable_point_exits_0_and_lists_it(tiny_data: Path, tmp_path: Path, capsys, monkeypatch):
    started = []
    import compactrec.cluster.run as run_module

    real = run_module.run_training
    monkeypatch.setattr(run_module, "run_training", lambda run: started.append(run.name) or real(run))
    code = main([
        "sweep", str(REPO / "configs" / "methods" / "hash.yaml"), f"data.path={tiny_data}",
        f"runs_dir={tmp_path}", "name=grid", "trainer.launcher=local", "cluster.num_workers=1", *TINY,
        "sweep={embedding.kind: [hash, memcom], compression.ratio: [4, 64]}",
    ])
    assert code == 0  # memcom cannot reach 64x with dim 32: listed, and every reachable point finished
    assert "grid/kind=memcom,ratio=64" not in started and len(started) == 3  # rejected before any worker
    out = tmp_path / "grid" / "latest"
    assert out.is_symlink() and (out / "results.csv").exists()
    done = _rows(out)
    assert list(done) == [("hash", "4"), ("hash", "64"), ("memcom", "4"), ("memcom", "64")]
    bad = done[("memcom", "64")]
    assert bad["status"] == "unreachable" and "cannot reach this ratio" in bad["error"]
    launch = out.resolve().name
    for point in [("hash", "4"), ("hash", "64"), ("memcom", "4")]:
        assert done[point]["status"] == "done" and 0.5 < float(done[point]["auc"]) < 1
        assert abs(float(done[point]["compression_ratio"]) / float(point[1]) - 1) < 0.05
        assert (tmp_path / "grid" / f"kind={point[0]},ratio={point[1]}" / launch / "metrics.json").exists()
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 4 and "unreachable (max 30.7x)" in md  # a row per point; 30.7x with small features compressed too (< d = 32)
    assert max(len(line) for line in md.splitlines()) < 200  # the reason stays short (the CSV has it whole); 2 columns more: best AUC, best epoch
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert re.search(r"\|\s+hash\s+\|\s+64x\s+\|\s+6\d\.\dx", printed)  # printed table
    assert "1 point(s) unreachable, not run: grid/kind=memcom,ratio=64" in printed


def test_a_failed_point_makes_the_sweep_exit_1(tiny_data: Path, tmp_path: Path):
    broken = tmp_path / "data"
    shutil.copytree(tiny_data, broken)
    shard = broken / "eval" / "part-00000.parquet"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a truncated eval shard
    code = main([
        "sweep", str(REPO / "configs" / "methods" / "hash.yaml"), f"data.path={broken}",
        f"runs_dir={tmp_path}", "name=bad", "trainer.launcher=local", "cluster.num_workers=1", *TINY,
        "sweep={compression.ratio: [4]}",
    ])
    assert code == 1
    (row,) = list(csv.DictReader((tmp_path / "bad" / "latest" / "results.csv").open()))
    assert row["status"] == "failed" and "part-00000.parquet" in row["error"]


def test_concurrent_trials_follow_the_cluster():
    from compactrec.cluster.tune_sweep import concurrent_trials, trial_resources
    from compactrec.trainer.config import load_config

    cpu2 = load_config(None, ["cluster.num_workers=2"])
    gpu8 = load_config(None, ["cluster.num_workers=8", "cluster.use_gpu=true", "cluster.cpus_per_worker=8"])
    assert trial_resources(gpu8) == {"CPU": 64.0, "GPU": 8.0}
    assert concurrent_trials({"CPU": 2.0}, [cpu2]) == 1  # this machine: one point at a time
    assert concurrent_trials({"CPU": 64.0}, [cpu2]) == 32
    assert concurrent_trials({"CPU": 512.0, "GPU": 64.0}, [gpu8]) == 8
    assert concurrent_trials({"CPU": 512.0, "GPU": 4.0}, [gpu8]) == 1  # too big: Ray Train says so
    assert concurrent_trials({"CPU": 64.0}, [cpu2, load_config(None, ["cluster.num_workers=16"])]) == 4


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_sweep_on_ray_tune(tiny_data: Path, tmp_path: Path):
    """On a local Ray cluster: a reachable point runs as a Tune trial (a 1-worker Ray Train
    run), an unreachable one is listed and never becomes a trial. One trial only: each costs
    ~20 s here, and several points in one sweep are covered by the local sweep test above."""
    code = main([
        "sweep", str(REPO / "configs" / "methods" / "hash.yaml"), f"data.path={tiny_data}",
        f"runs_dir={tmp_path}", "name=tune", "cluster.num_workers=1", *TINY,
        "sweep={embedding.kind: [hash, qr], compression.ratio: [64]}",
    ])
    assert code == 0
    out = tmp_path / "tune" / "latest"
    done = _rows(out)
    assert done[("qr", "64")]["status"] == "unreachable"
    assert {k for k, r in done.items() if r["status"] == "done"} == {("hash", "64")}
    assert (out / "tune").is_dir()  # Tune's own experiment state, beside the table
    launch = out.resolve().name
    ray_state = tmp_path / "tune" / "kind=hash,ratio=64" / launch / "ray"
    assert ray_state.is_dir() and not list(ray_state.rglob("checkpoint_*"))
