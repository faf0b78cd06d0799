"""Resume compares the saved run with the current one: other method, sizes, hash seed or
data are refused before anything is loaded, with every differing key named; moved data and
explicitly allowed changes (more epochs) resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compactrec.cli import main
from compactrec.trainer.checkpoint_manifest import CheckpointError
from compactrec.trainer.fingerprint import check_resume

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "methods" / "hash.yaml")
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512",
        "trainer.launcher=local", "cluster.num_workers=1", "trainer.max_steps=4"]


@pytest.fixture(scope="module")
def saved(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("resume_runs")
    assert main(["train", CONFIG, *TINY, f"data.path={tiny_data}", f"runs_dir={runs}", "name=saved"]) == 0
    return runs


def _resume(saved: Path, data: Path, name: str, *overrides: str) -> int:
    return main(["train", CONFIG, *TINY, f"data.path={data}", f"runs_dir={saved}", f"name={name}",
                 f"trainer.resume_from={saved / 'saved' / 'latest' / 'checkpoints'}", *overrides])


@pytest.mark.parametrize("overrides,named", [
    (["embedding.hash.seed=1"], "embedding.hash.seed: checkpoint 0, now 1"),
    (["embedding.kind=qr"], "embedding.kind: checkpoint 'hash', now 'qr'"),
    (["model.embedding_dim=16", "model.dense_arch=[64,16]"], "model.embedding_dim: checkpoint 32, now 16"),
    (["compression.ratio=4"], "compression.ratio: checkpoint 16.0, now 4.0"),
    (["embedding.precision=fp16"], "embedding.precision: checkpoint 'fp32', now 'fp16'"),
], ids=["hash-seed", "kind", "dim", "ratio", "precision"])
def test_other_settings_are_refused_with_the_keys_named(saved: Path, tiny_data: Path, capsys, overrides, named):
    assert _resume(saved, tiny_data, "other", *overrides) == 2
    err = capsys.readouterr().err
    assert "refusing to resume" in err and named in err and "trainer.resume_changes=" in err
    assert "Missing key" not in err and "Traceback" not in err


def test_other_data_with_the_same_layout_is_refused_and_moved_data_resumes(saved: Path, tiny_data: Path, tmp_path: Path, capsys):
    from tests.conftest import make_data

    other = make_data(tmp_path / "other", seed=1)  # same shards and row groups, other rows
    assert _resume(saved, other, "other_data") == 2
    assert "data.identity: other data" in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(tiny_data, moved)
    assert _resume(saved, moved, "moved") == 0
    assert json.loads((saved / "moved" / "latest" / "metrics.json").read_text())["resumed_from"]


def test_an_allowed_change_resumes(saved: Path, tiny_data: Path, capsys):
    assert _resume(saved, tiny_data, "more", "trainer.epochs=2", "trainer.resume_changes=[trainer.epochs]") == 0
    m = json.loads((saved / "more" / "latest" / "metrics.json").read_text())
    assert m["steps"] == 8 and m["resumed_from"]  # 4 saved + 4 of the second epoch
    assert "with changed settings (trainer.resume_changes): ['trainer.epochs']" in capsys.readouterr().out


def test_check_resume_names_keys_and_refuses_unknown_allowances():
    saved = {"embedding.kind": "hash", "trainer.epochs": 1, "data.identity": "a" * 64, "data.path": "/d"}
    now = {**saved, "trainer.epochs": 3, "data.path": "/elsewhere"}
    with pytest.raises(CheckpointError, match="trainer.epochs: checkpoint 1, now 3"):
        check_resume(saved, now, [], "ckpt")
    assert check_resume(saved, now, ["trainer"], "ckpt") == ["trainer.epochs"]  # a section allows its keys
    with pytest.raises(CheckpointError, match="does not compare"):
        check_resume(saved, now, ["cluster.num_workers"], "ckpt")
