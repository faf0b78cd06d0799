"""A run with fp16 tables (``embedding.precision=fp16``) through ``compactrec train``: the
ratio asked met with fp16 rows, the optimizer state reported, and a resume from its
checkpoint; a changed precision is refused on resume (test_resume_checks.py)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compactrec.cli import main
from compactrec.data.reader.manifest import read_manifest
from compactrec.embeddings.factory import build_embeddings
from compactrec.embeddings.precision import collections
from compactrec.trainer.config import load_config
from compactrec.trainer.features import trainable_schema

CONFIG = str(Path(__file__).resolve().parents[2] / "configs" / "methods" / "hash.yaml")
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512",
        "trainer.launcher=local", "cluster.num_workers=1", "trainer.max_steps=4", "embedding.precision=fp16"]


def test_fp16_run_reports_its_bytes_and_resumes_from_its_checkpoint(tiny_data: Path, tmp_path: Path):
    assert main(["train", CONFIG, *TINY, f"data.path={tiny_data}", f"runs_dir={tmp_path}", "name=h16"]) == 0
    m = json.loads((tmp_path / "h16" / "latest" / "metrics.json").read_text())
    assert m["config"]["embedding"]["precision"] == "fp16"
    assert abs(m["compression_ratio"] / 16 - 1) < 0.05  # hash.yaml's 16x, met with fp16 rows
    cfg = load_config(CONFIG, [f"data.path={tiny_data}", "embedding.precision=fp16"])
    schema = trainable_schema(read_manifest(tiny_data).schema)
    emb = build_embeddings(cfg.embedding, cfg.compression, schema, cfg.model.embedding_dim, torch.device("meta"))
    rows = sum(c.num_embeddings for _, configs, _ in collections(emb) for c in configs)
    assert m["sparse_optimizer_state_bytes"] == rows * 4  # rowwise Adagrad: one fp32 per row
    assert m["embedding_bytes"] < rows * cfg.model.embedding_dim * 4  # 2 bytes a value, not 4
    ckpt = tmp_path / "h16" / "latest" / "checkpoints"
    assert main(["train", CONFIG, *TINY, f"data.path={tiny_data}", f"runs_dir={tmp_path}", "name=h16b",
                 f"trainer.resume_from={ckpt}", "trainer.epochs=2", "trainer.resume_changes=[trainer.epochs]"]) == 0
    m2 = json.loads((tmp_path / "h16b" / "latest" / "metrics.json").read_text())
    assert m2["resumed_from"] and m2["steps"] == 8
