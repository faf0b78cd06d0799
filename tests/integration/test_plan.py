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
    for name, (rows, dim, _) in shapes.items():  # every table of the built model, with its real shape
        assert f"| {name} | {rows:,} x {dim} |" in out, f"{method}: table {name} ({rows:,} x {dim}) not in the plan"
    if method in ("full", "mixed_dim"):  # uncompressed rows: cat_0's 40M ids appear as table rows
        assert any(rows == 40_000_000 and "cat_0" in name for name, (rows, _, _) in shapes.items())
    per_rank = [float(x) for x in re.search(r"per rank: min ([\d.]+) GB, max ([\d.]+) GB, mean ([\d.]+) GB", out).groups()]
    assert 0 < per_rank[0] <= per_rank[2] <= per_rank[1] < 80
    balance = float(re.search(r"max/mean ([\d.]+)", out).group(1))
    assert balance == pytest.approx(per_rank[1] / per_rank[2], rel=0.03)  # the GB figures are rounded
    if method == "cafe":  # hot rows and sketch spread over every rank, not on one
        assert balance <= 1.3, out
        assert re.search(r"\| cafe_hot \| [\d,]+ x \d+ \| row_wise \| 0-63 \|", out), out
    ranks = {int(r) for line in out.splitlines() if line.startswith("| ") for r in re.findall(r"\b(\d+)\b", line.split("|")[4])}
    assert max(ranks) <= 63


def test_fp16_tables_plan_at_2_bytes_a_value_with_fp32_optimizer_state(capsys):
    """The full Criteo-TB tables at fp16: 2x, and each shard's bytes are rows x dim x 2 plus
    rowwise Adagrad's fp32 value per row."""
    cfg_path = str(CONFIGS / "criteo_tb_full.yaml")
    sharded = {}
    for precision in ("fp32", "fp16"):
        assert main(["plan", cfg_path, f"embedding.precision={precision}", "--world-size", "64", "--hbm-gb", "80"]) == 0
        out = capsys.readouterr().out
        assert f"full ({precision} tables)" in out
        sharded[precision] = float(re.search(r"sharded state \(.*\): ([\d.]+) GB in all", out).group(1))
        if precision == "fp16":
            assert float(re.search(r"= ([\d.]+)x", out).group(1)) == pytest.approx(2.0, rel=1e-3)
    cfg = load_config(CONFIGS / "criteo_tb_full.yaml")
    shapes = _table_shapes(build_meta_model(cfg, plan_schema(cfg)[0]))
    rows = sum(r for r, _, _ in shapes.values())
    dim = {d for _, d, _ in shapes.values()}.pop()
    assert {e for _, _, e in shapes.values()} == {4}
    gb = 1024**3
    assert sharded["fp32"] == pytest.approx(rows * (dim * 4 + 4) / gb, abs=0.01)
    assert sharded["fp16"] == pytest.approx(rows * (dim * 2 + 4) / gb, abs=0.01)


def test_bf16_tables_are_refused_on_a_cpu_plan(tiny_data: Path, capsys):
    assert main(["plan", str(CONFIGS / "methods" / "hash.yaml"), f"data.path={tiny_data}", "embedding.precision=bf16",
                 "--world-size", "2"]) != 0
    assert "error: embedding.precision=bf16 on cpu: FBGEMM has no CPU kernels" in capsys.readouterr().err


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
    assert "schema from manifest" in out and "cafe_hot" in out and "(cpu, batch " in out


_RANK_ROW = r"^\| (\d+) \| ([\d.]+) \| (\d+) \| ([a-z_,-]+) \| ([\d.]+) \| ([\d.]+) \|$"


def test_plan_takes_the_job_shape_from_the_cluster_config(capsys):
    """8 pods x 8 GPUs from configs/cluster/gpu-8xh100.yaml; batch 1024 from the run config;
    a row per rank with its bytes and TorchRec's cost estimates; the headroom."""
    cfg = load_config(CONFIGS / "criteo_tb_cafe.yaml")
    argv = ["plan", str(CONFIGS / "criteo_tb_cafe.yaml"), "--cluster-config", str(CONFIGS / "cluster" / "gpu-8xh100.yaml"),
            "--hbm-gb", "80"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "64 ranks = 8 hosts x 8" in out and f"batch {cfg.data.batch_size} per rank" in out
    rows = re.findall(_RANK_ROW, out, re.M)
    assert [int(r[0]) for r in rows] == list(range(64))
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)  # every rank looks up and exchanges
    worst = max(float(r[1]) for r in rows)
    assert worst == float(re.search(r"per rank: min [\d.]+ GB, max ([\d.]+) GB", out).group(1))
    left = float(re.search(r"headroom: .* uses [\d.]+ of ([\d.]+) GB usable .*: ([\d.]+) GB left", out).group(2))
    assert left == pytest.approx(80 * 0.85 - worst, abs=0.02)
    # the planner itself gets the batch and the hosts: its all_to_all estimate moves with them
    comms = sum(float(r[5]) for r in rows)
    cafe = str(CONFIGS / "criteo_tb_cafe.yaml")
    for argv in (["plan", cafe, "data.batch_size=4096", "--world-size", "64", "--gpus-per-host", "8", "--hbm-gb", "80"],
                 ["plan", cafe, "--world-size", "64", "--gpus-per-host", "64", "--hbm-gb", "80"]):  # one host of 64
        assert main(argv) == 0
        other = re.findall(_RANK_ROW, capsys.readouterr().out, re.M)
        assert sum(float(r[5]) for r in other) != pytest.approx(comms, rel=0.05), argv


def test_a_plan_that_does_not_fit_says_what_would(capsys):
    """Full tables (98 GB) on 2 hosts x 8 with 4 GB each: one paragraph on stderr, no
    traceback, with a world size that does fit (and one host fewer does not)."""
    cfgs = str(CONFIGS / "criteo_tb_full.yaml")
    assert main(["plan", cfgs, "--hosts", "2", "--gpus-per-host", "8", "--hbm-gb", "4"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "ShardingOption" not in err and len(err.strip().splitlines()) == 1
    assert "do not fit 16 ranks (2 hosts x 8" in err and "insufficient storage" in err
    fits = int(re.search(r"smallest world size that fits is (\d+) \((\d+) hosts x 8\)", err).group(1))
    assert main(["plan", cfgs, "--world-size", str(fits), "--gpus-per-host", "8", "--hbm-gb", "4"]) == 0
    assert main(["plan", cfgs, "--world-size", str(fits - 8), "--gpus-per-host", "8", "--hbm-gb", "4"]) == 2


def test_world_size_must_be_whole_hosts():
    from compactrec.sharding.planner import make_topology

    with pytest.raises(ValueError, match="not a whole number of hosts"):
        make_topology(12, "cuda", 8)
    with pytest.raises(SystemExit, match="not 3 hosts x 8"):
        main(["plan", str(CONFIGS / "criteo_tb_cafe.yaml"), "--world-size", "16", "--hosts", "3", "--gpus-per-host", "8"])
