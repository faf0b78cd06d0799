"""MLflow is an optional extra, off by default: the default run never imports it; asking for
it without it installed is an error naming the key and the install command, before any
worker starts; enabled, the run's scalars go through Ray's setup_mlflow (fake MLflow here)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from compactrec.cli import main
from compactrec.trainer.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_off_by_default_and_never_imported(tmp_path: Path):
    from compactrec.trainer.scalars import check_mlflow, scalar_writer

    cfg = load_config(None, ["trainer.tensorboard=false"])
    assert cfg.mlflow.enabled is False
    check_mlflow(cfg)
    assert scalar_writer(cfg, True, tmp_path) is None and "mlflow" not in sys.modules


def test_enabled_without_mlflow_fails_before_any_worker(tiny_data: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed, whatever this machine has
    code = main(["train", str(REPO / "configs" / "methods" / "full.yaml"), f"data.path={tiny_data}",
                 f"runs_dir={tmp_path}", "trainer.launcher=local", "cluster.num_workers=1", "mlflow.enabled=true"])
    assert code == 2
    err = capsys.readouterr().err
    assert "mlflow.enabled=true needs MLflow" in err and "compactrec[mlflow]" in err
    assert not (tmp_path / "full").exists()  # nothing started


def test_scalars_reach_mlflow_through_rays_integration(tmp_path: Path, monkeypatch):
    import ray.air.integrations.mlflow as ray_mlflow

    from compactrec.trainer.scalars import scalar_writer

    logged, calls = [], {}
    fake = types.SimpleNamespace(log_metric=lambda k, v, step: logged.append((k, v, step)),
                                 end_run=lambda: logged.append("end"))
    monkeypatch.setitem(sys.modules, "mlflow", types.ModuleType("mlflow"))
    monkeypatch.setattr(ray_mlflow, "setup_mlflow", lambda **kw: calls.update(kw) or fake)
    cfg = load_config(None, ["mlflow.enabled=true", "mlflow.tracking_uri=http://mlflow:5000", "mlflow.experiment=ctr",
                             "mlflow.tags={team: recsys}", "trainer.tensorboard=false", "name=demo/kind=cafe",
                             "trainer.run_id=20261201-000000-abcd", "embedding.kind=cafe"])
    w = scalar_writer(cfg, True, tmp_path)
    w.add_scalar("train/loss", 0.5, 50)
    w.add_scalar("eval/ndcg@10", 0.3, 100)
    w.close()
    assert logged == [("train/loss", 0.5, 50), ("eval/ndcg_at_10", 0.3, 100), "end"]
    assert calls["tracking_uri"] == "http://mlflow:5000" and calls["experiment_name"] == "ctr"
    assert calls["run_name"] == "demo/kind=cafe/20261201-000000-abcd" and calls["create_experiment_if_not_exists"]
    assert calls["tags"] == {"compactrec.method": "cafe", "team": "recsys"}
    assert calls["config"]["embedding.kind"] == "cafe" and calls["config"]["optim.dense_lr"] == 0.02
    assert scalar_writer(cfg, False, tmp_path) is None  # rank 0 only


def test_mlflow_is_not_in_the_lock():
    assert not [ln for ln in (REPO / "requirements.lock").read_text().splitlines() if ln.lower().startswith("mlflow")]


def test_a_bad_mlflow_key_names_itself():
    with pytest.raises(ConfigError, match="mlflow.enable"):
        load_config(None, ["mlflow.enable=true"])
