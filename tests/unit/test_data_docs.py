"""docs/data.md's hand-written data set is a working one: its Python writes the shards, its
JSON is the manifest, `compactrec data inspect` reads it back, and a run trains on it (any
column names, a multi-hot feature); a shard that disagrees with the manifest is reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from compactrec.cli import main

REPO = Path(__file__).resolve().parents[2]
DOC = (REPO / "docs" / "data.md").read_text()


def _blocks(lang: str) -> list:
    return re.findall(rf"```{lang}\n(.*?)```", DOC, re.S)


@pytest.fixture()
def handmade(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (python,) = _blocks("python")
    exec(compile(python, "docs/data.md", "exec"), {})
    (manifest,) = _blocks("json")
    (tmp_path / "mydata" / "_manifest.json").write_text(manifest)
    return tmp_path / "mydata"


def test_every_manifest_field_is_documented():
    from compactrec.data.reader.manifest import FORMAT

    manifest = json.loads(_blocks("json")[0])
    assert manifest["format"] == FORMAT
    for field in ["format", "label", "dense", "sparse", "sparse[].name", "sparse[].cardinality", "sparse[].multi_hot",
                  "splits", "splits.<s>.files", "splits.<s>.rows", "stats", "ranking"]:
        assert f"| `{field}` |" in DOC, field


def test_the_documented_example_inspects_and_trains(handmade: Path, tmp_path: Path, capsys):
    assert main(["data", "inspect", str(handmade)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tags\s+1,000\s+multi-hot\s+list<element: int64>", out), out
    assert re.search(r"user_id\s+5,000\s+one-hot\s+int64", out) and "train: 1,024 rows in 1 files" in out
    assert main(["train", str(REPO / "configs" / "methods" / "hash.yaml"), f"data.path={handmade}", "compression.ratio=4",
                 f"runs_dir={tmp_path / 'runs'}", "name=mine", "trainer.launcher=local", "cluster.num_workers=1",
                 "trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=64", "model.embedding_dim=8",
                 "model.dense_arch=[16,8]"]) == 0
    m = json.loads((tmp_path / "runs" / "mine" / "latest" / "metrics.json").read_text())
    assert m["steps"] == 1024 // 64 and m["eval_rows"] == 256


def test_inspect_reports_a_shard_that_disagrees(handmade: Path, capsys):
    manifest = json.loads((handmade / "_manifest.json").read_text())
    manifest["splits"]["eval"]["rows"] = 300
    manifest["sparse"][0]["name"] = "customer"
    (handmade / "_manifest.json").write_text(json.dumps(manifest))
    assert main(["data", "inspect", str(handmade)]) == 1
    err = capsys.readouterr().err
    assert "missing column 'customer'" in err and "the manifest says 300 rows, the shards' footers 256" in err
