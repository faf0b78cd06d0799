"""Files the project writes honour the umask: under umask 022 every shard, manifest, metrics.json,
config.yaml and checkpoint file is readable by group and others (a shared volume's other users),
though each is written to a temporary name and renamed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pyarrow as pa
import pytest

from compactrec.cli import main
from compactrec.data.convert.piece import SCHEMA, ShardWriter
from compactrec.io import atomic_write_json
from tests.conftest import make_data


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def _unreadable(root: Path) -> list:
    """Files under ``root`` that group or others cannot read (mode & 0o044 != 0o044)."""
    files = [p for p in root.rglob("*") if p.is_file()]
    assert files, f"nothing written under {root}"
    return [f"{p.relative_to(root)} {stat.filemode(p.stat().st_mode)}" for p in files if p.stat().st_mode & 0o044 != 0o044]


def test_atomic_write_gives_0644_under_umask_022(tmp_path: Path, umask_022):
    path = atomic_write_json(tmp_path / "metrics.json", {"auc": 0.5})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary name is gone


def test_atomic_write_follows_a_stricter_umask(tmp_path: Path):
    old = os.umask(0o077)
    try:
        path = atomic_write_json(tmp_path / "private.json", {})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_converter_shard_is_world_readable(tmp_path: Path, umask_022):
    writer = ShardWriter(tmp_path / "part-00000.parquet", rows_per_group=4, compression="zstd")
    writer.add(pa.Table.from_pylist([{f.name: 0 for f in SCHEMA}] * 4, schema=SCHEMA))
    writer.close()
    assert _unreadable(tmp_path) == []


def test_data_run_and_checkpoints_are_readable_by_others(tmp_path: Path, umask_022):
    data = make_data(tmp_path / "data", rows_train=1024, rows_eval=256)
    args = ["train", str(Path(__file__).parents[2] / "configs" / "methods" / "full.yaml"), f"data.path={data}",
            f"runs_dir={tmp_path / 'runs'}", "name=modes", "trainer.launcher=local", "cluster.num_workers=1",
            "trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128",
            "trainer.checkpoint_every=4"]
    assert main(args) == 0
    run = tmp_path / "runs" / "modes" / "latest"
    assert (run / "metrics.json").exists() and (run / "config.yaml").exists()
    assert list(run.rglob("COMPLETE")), "no checkpoint was written"
    assert _unreadable(data) == [] and _unreadable(run) == []
