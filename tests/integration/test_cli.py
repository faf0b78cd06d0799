"""The real command line on tiny data: synth, train (local and on 2 Ray workers),
metrics.json contents, and clear errors for bad configs and bad data."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from compactrec.cli import main

METRIC_KEYS = {
    "auc", "logloss", "ne", "bayes_auc", "samples_per_s", "embedding_bytes",
    "full_embedding_bytes", "compression_ratio", "steps", "world_size",
}
TINY_RUN = [
    "trainer.progress_bar=false",
    "trainer.tensorboard=false",
    "data.batch_size=128",
    "data.eval_batch_size=512",
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "compactrec", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_synth_command_writes_shards_and_reports_bayes_auc(tmp_path: Path):
    out = tmp_path / "d"
    r = _cli("synth", str(out), "rows_train=1000", "rows_eval=500", "scale=1e-4", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Bayes AUC" in r.stdout and (out / "_manifest.json").exists()
    assert len(list((out / "train").glob("*.parquet"))) == 4


def test_train_local_writes_every_metric(tiny_data: Path, tmp_path: Path):
    args = ["train", str(Path(__file__).parents[2] / "configs" / "methods" / "full.yaml"), f"data.path={tiny_data}",
            f"runs_dir={tmp_path}", "name=local1", "trainer.launcher=local", "cluster.num_workers=1", *TINY_RUN]
    assert main(args) == 0
    m = json.loads((tmp_path / "local1" / "latest" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
    assert m["world_size"] == 1 and m["steps"] == 4096 // 128
    assert 0.5 < m["auc"] < m["bayes_auc"] and m["compression_ratio"] == 1.0  # learns, below the ceiling
    assert (tmp_path / "local1" / "latest" / "config.yaml").exists()
    assert m["ratio_requested"] == 1 and m["train_loss_steps"] == 32 % 50  # the last window: every step since the last log
    assert 0.3 < m["train_loss"] < 0.7


@pytest.mark.distributed
def test_train_on_two_ray_workers_keeps_one_copy_of_each_checkpoint(tiny_data: Path, tmp_path: Path):
    r = _cli("train", "configs/methods/full.yaml", f"data.path={tiny_data}", f"runs_dir={tmp_path}", "name=ray2",
             "trainer.checkpoint_every=4", "trainer.keep_checkpoints=2", "cluster.address=local", *TINY_RUN,
             cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    run = (tmp_path / "ray2" / "latest").resolve()
    m = json.loads((run / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4096 // (128 * 2)
    assert METRIC_KEYS <= set(m)
    assert "Bayes AUC" in r.stdout and "ray2" in r.stdout  # the summary table
    # Each checkpoint is on disk once, in the run's own folder: DCP's .metadata marks one.
    copies = sorted(p.parent.relative_to(run) for p in tmp_path.rglob(".metadata"))
    # Beside the two kept checkpoints, one best-eval checkpoint (trainer.keep_best) in best/.
    best = [c for c in copies if c.parts[0] == "best"]
    assert len(best) == 1 and best[0].name.startswith("step_"), copies
    assert [c for c in copies if c not in best] == [Path("checkpoints/step_000000012"), Path("checkpoints/step_000000016")], copies
    assert (run / "ray").is_dir() and not list((run / "ray").rglob("checkpoint_*"))  # Ray's state only
    assert not (tmp_path / "_ray").exists()
    # Quiet console (a pipe here: no colour codes), everything in the run's log file
    console = r.stdout + r.stderr
    assert "Traceback" not in console and "core_worker.cc" not in console and "\x1b[" not in console, console[-3000:]
    log = (run / "log.txt").read_text()
    assert "world_rank=1" in log and re.search(r"\|\s+ray2\s+\|", log) and "\x1b[" not in log


def test_two_launches_of_one_name_keep_both_runs(tiny_data: Path, tmp_path: Path):
    args = ["train", str(Path(__file__).parents[2] / "configs" / "methods" / "full.yaml"), f"data.path={tiny_data}",
            f"runs_dir={tmp_path}", "name=same", "trainer.launcher=local", "cluster.num_workers=1", "trainer.max_steps=4",
            "trainer.progress_bar=false", "data.batch_size=128", "data.eval_batch_size=512"]
    assert main(args) == 0
    first = (tmp_path / "same" / "latest").resolve()
    before = (first / "metrics.json").read_text()
    assert main([*args, "trainer.seed=1"]) == 0
    second = (tmp_path / "same" / "latest").resolve()
    launches = sorted(p for p in (tmp_path / "same").iterdir() if p.name != "latest")
    assert launches == sorted([first, second]) and first != second
    assert (first / "metrics.json").read_text() == before  # the first run is untouched
    for run in (first, second):  # each has its own config, checkpoints and TensorBoard events
        assert (run / "config.yaml").exists() and list((run / "checkpoints").iterdir())
        assert len(list((run / "tb").iterdir())) == 1
    assert json.loads((second / "metrics.json").read_text())["config"]["trainer"]["seed"] == 1
    # resuming continues the newest launch in its own folder instead of making a third
    assert main([*args, "trainer.seed=1", "trainer.resume_from=latest", "trainer.epochs=2",
                 "trainer.resume_changes=[trainer.epochs]"]) == 0
    assert (tmp_path / "same" / "latest").resolve() == second
    assert len([p for p in (tmp_path / "same").iterdir() if p.name != "latest"]) == 2
    assert json.loads((second / "metrics.json").read_text())["resumed_from"].startswith(str(second))


def test_unknown_config_key_is_a_clear_error(tmp_path: Path):
    cfg = tmp_path / "typo.yaml"
    cfg.write_text("optim:\n  dense_lrr: 0.1\n")
    r = _cli("train", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    assert "optim.dense_lrr" in r.stderr and "typo.yaml" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_data_is_a_clear_error(tmp_path: Path):
    r = _cli("train", "configs/methods/full.yaml", "data.synthesize_if_missing=false", f"data.path={tmp_path / 'nowhere'}", "trainer.launcher=local",
             "cluster.num_workers=1", cwd=Path(__file__).parents[2])
    assert r.returncode == 2 and "_manifest.json: no data manifest" in r.stderr
