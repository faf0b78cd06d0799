"""The real command line on tiny data: synth, train (local and on 2 Ray workers),
metrics.json contents, and clear errors for bad configs and bad data."""

from __future__ import annotations

import json
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
    m = json.loads((tmp_path / "local1" / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
    assert m["world_size"] == 1 and m["steps"] == 4096 // 128
    assert 0.5 < m["auc"] < m["bayes_auc"] and m["compression_ratio"] == 1.0  # learns, below the ceiling
    assert (tmp_path / "local1" / "config.yaml").exists()


@pytest.mark.distributed
def test_train_on_two_ray_workers(tiny_data: Path, tmp_path: Path):
    r = _cli("train", "configs/methods/full.yaml", f"data.path={tiny_data}", f"runs_dir={tmp_path}", "name=ray2",
             *TINY_RUN, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "ray2" / "metrics.json").read_text())
    assert m["world_size"] == 2 and m["steps"] == 4096 // (128 * 2)
    assert METRIC_KEYS <= set(m)
    assert "Bayes AUC" in r.stdout and "ray2" in r.stdout  # the summary table


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
