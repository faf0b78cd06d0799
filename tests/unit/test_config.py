"""Config: every YAML under configs/ loads; unknown or mistyped keys name key and file."""

from __future__ import annotations

from pathlib import Path

import pytest

from compactrec.trainer.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    with_overrides,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALL_YAML = sorted(p for p in CONFIGS.rglob("*.y*ml") if p.suffix in (".yaml", ".yml"))


def test_configs_folder_is_found():
    assert ALL_YAML, f"no YAML under {CONFIGS}"


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_yaml_under_configs_loads(path: Path):
    if path.parent.name == "cluster":  # KubeRay pod shapes: their own schema
        from compactrec.cluster.cluster_config import KubeClusterConfig, load_cluster_config

        assert isinstance(load_cluster_config(path), KubeClusterConfig)
        return
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_defaults_are_the_demo_shape():
    cfg = load_config()
    assert cfg.embedding.kind == "full" and cfg.cluster.num_workers == 2
    assert cfg.model.dense_arch[-1] == cfg.model.embedding_dim


def test_unknown_key_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "trainer.epochz" in str(e.value) and str(bad) in str(e.value)


def test_mistyped_value_names_key_and_file(tmp_path: Path):
    bad = tmp_path / "typo.yaml"
    bad.write_text("data:\n  batch_size: lots\n")
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert "data.batch_size" in str(e.value) and str(bad) in str(e.value)


def test_bad_override_names_the_override():
    with pytest.raises(ConfigError, match="override 'model.nope=1'.*model.nope"):
        load_config(None, ["model.nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["model.arch"])


def test_choice_and_shape_checks():
    with pytest.raises(ConfigError, match="embedding.kind"):
        load_config(None, ["embedding.kind=huge"])
    with pytest.raises(ConfigError, match="dense_arch"):
        load_config(None, ["model.embedding_dim=8"])


def test_overrides_apply_and_round_trip():
    cfg = load_config(None, ["data.batch_size=128", "model.dense_arch=[48,32]"])
    assert cfg.data.batch_size == 128 and cfg.model.dense_arch == [48, 32]
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_sweep_keys_are_checked():
    cfg = load_config(None, ["sweep={model.arch: [dlrm, dcn]}"])
    point = with_overrides(cfg, {"model.arch": "dcn"})
    assert point.model.arch == "dcn" and cfg.model.arch == "dlrm"
    with pytest.raises(ConfigError, match="sweep key 'model.archh'"):
        load_config(None, ["sweep={model.archh: [dlrm]}"])


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_a_bad_override_is_blamed_on_the_override_not_the_file():
    path = CONFIGS / "methods" / "hash.yaml"
    with pytest.raises(ConfigError) as e:
        load_config(path, ["embedding.kind=bogus"])
    assert str(e.value).startswith("override 'embedding.kind=bogus': 'embedding.kind' is 'bogus'")
    assert "hash.yaml" not in str(e.value)


@pytest.mark.parametrize("override", [
    "data.batch_size=0", "data.batch_size=-5", "data.eval_batch_size=0", "cluster.num_workers=0",
    "trainer.keep_checkpoints=0", "trainer.log_every=0", "trainer.max_steps=0", "data.prefetch_batches=0",
])
def test_knobs_out_of_range_name_key_and_override(override: str):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(CONFIGS / "methods" / "full.yaml", [override])
    assert str(e.value).startswith(f"override '{override}': {key}=") and "must be" in str(e.value)


def test_a_knob_out_of_range_in_a_file_names_the_file(tmp_path: Path):
    bad = tmp_path / "zero.yaml"
    bad.write_text("data:\n  batch_size: 0\n")
    with pytest.raises(ConfigError, match=f"^{bad}: data.batch_size=0: must be >= 1"):
        load_config(bad)


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/../../b", "", ".", "a/./b"])
def test_run_names_stay_inside_runs_dir(name: str, tmp_path: Path):
    with pytest.raises(ConfigError, match="name="):
        load_config(None, [f"name={name}", f"runs_dir={tmp_path}"])
    assert load_config(None, ["name=demo/kind=full"]).name == "demo/kind=full"  # a sweep point's name
