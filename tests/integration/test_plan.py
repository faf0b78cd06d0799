"""`compactrec plan` sizes a Criteo-TB cluster without training: every method's config plans
on 64 GPUs with 80 GB each, from the real Criteo-TB cardinalities (40M cap), on the meta
device; the printed bytes agree with the built model's and the method's own state."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from compactrec.cli import main
from compactrec.sharding.plan_report import _table_shapes, build_meta_model, plan_schema
from compactrec.sharding.planner import method_state
from compactrec.trainer.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
METHODS = ["full", "hash", "qr", "memcom", "mixed_dim", "cafe"]


@pytest.mark.parametrize("method", METHODS)
def test_criteo_tb_plan_for_64_ranks(method: str, capsys):
    assert main(["plan", str(CONFIGS / f"criteo_tb_{method}.yaml"), "--world-size", "64", "--hbm-gb", "80"]) == 0
    out = capsys.readouterr().out
    ratio = float(re.search(r"= ([\d.]+)x", out).group(1))
    assert ratio == pytest.approx(1.0 if method == "full" else 16.0, rel=0.05)
    cfg = load_config(CONFIGS / f"criteo_tb_{method}.yaml")
    shapes = _table_shapes(build_meta_model(cfg, plan_schema(cfg)[0]))
    assert any("cat_0" in name for name in shapes), f"{method}: no table of cat_0 in {sorted(shapes)}"
    for name, (rows, dim) in shapes.items():  # every table of the built model, with its real shape
        assert f"| {name} | {rows:,} x {dim} |" in out, f"{method}: table {name} ({rows:,} x {dim}) not in the plan"
    if method in ("full", "mixed_dim"):  # uncompressed rows: cat_0's 40M ids appear as table rows
        assert any(rows == 40_000_000 and "cat_0" in name for name, (rows, _) in shapes.items())
    per_rank = [float(x) for x in re.search(r"per rank: min ([\d.]+) GB, max ([\d.]+) GB, mean ([\d.]+) GB", out).groups()]
    assert 0 < per_rank[0] <= per_rank[2] <= per_rank[1] < 80
    balance = float(re.search(r"max/mean ([\d.]+)", out).group(1))
    assert balance == pytest.approx(per_rank[1] / per_rank[2], rel=0.03)  # the GB figures are rounded
    if method == "cafe":  # hot rows and sketch spread over every rank, not on one
        assert balance <= 1.3, out
        assert re.search(r"\| cafe_hot \| [\d,]+ x \d+ \| row_wise \| 0-63 \|", out), out
    ranks = {int(r) for line in out.splitlines() if line.startswith("| ") for r in re.findall(r"\b(\d+)\b", line.split("|")[4])}
    assert max(ranks) <= 63


def test_cafe_sketch_counts_per_hot_row_and_mde_projections_replicated():
    cfg = load_config(CONFIGS / "criteo_tb_cafe.yaml")
    schema, _ = plan_schema(cfg)
    model = build_meta_model(cfg, schema)
    per_row, replicated = method_state(model)
    emb = model.model.sparse_arch.embedding_bag_collection
    sketch_bytes = sum(b.numel() * b.element_size() for b in emb.sketch.buffers())
    assert per_row["cafe_hot"] * emb.plan.hot_rows == pytest.approx(sketch_bytes)
    mde = build_meta_model(load_config(CONFIGS / "criteo_tb_mixed_dim.yaml"), schema)
    _, mde_replicated = method_state(mde)
    proj = sum(p.numel() * 4 for p in mde.model.sparse_arch.embedding_bag_collection.projections.parameters())
    assert mde_replicated - replicated >= 3 * proj  # projections: weights, optimizer state, gradients
    assert all(p.device == torch.device("meta") for p in emb.parameters())  # no 100 GB of tables built


def test_small_cpu_plan_from_a_manifest(tiny_data: Path, capsys):
    assert main(["plan", str(CONFIGS / "methods" / "cafe.yaml"), f"data.path={tiny_data}", "--world-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "schema from manifest" in out and "cafe_hot" in out and "(cpu)" in out
