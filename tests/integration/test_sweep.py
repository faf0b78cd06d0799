"""A config-declared sweep runs every point and collects one results table (CSV, Markdown,
PNG); a point a method cannot reach is a row with its error, not the end of the sweep."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from compactrec.cli import main


def test_sweep_collects_every_point(tiny_data: Path, tmp_path: Path, capsys):
    code = main([
        "sweep", str(Path(__file__).parents[2] / "configs" / "methods" / "hash.yaml"), f"data.path={tiny_data}",
        f"runs_dir={tmp_path}", "name=grid", "trainer.launcher=local", "cluster.num_workers=1",
        "trainer.progress_bar=false", "trainer.tensorboard=false", "trainer.checkpoint_every=-1",
        "sweep={embedding.kind: [hash, memcom], compression.ratio: [4, 64]}",
    ])
    assert code == 1  # memcom cannot reach 64x with dim 32: reported, the others still ran
    out = tmp_path / "grid"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["embedding.kind"], r["compression.ratio"]) for r in rows] == [
        ("hash", "4"), ("hash", "64"), ("memcom", "4"), ("memcom", "64")]
    done = {(r["embedding.kind"], r["compression.ratio"]): r for r in rows}
    assert "cannot reach this ratio" in done[("memcom", "64")]["error"]
    for point in [("hash", "4"), ("hash", "64"), ("memcom", "4")]:
        assert not done[point].get("error") and 0.5 < float(done[point]["auc"]) < 1
        assert abs(float(done[point]["compression_ratio"]) / float(point[1]) - 1) < 0.05
        assert (out / f"kind={point[0]},ratio={point[1]}" / "metrics.json").exists()
    md = (out / "results.md").read_text()
    assert md.count("\n| ") == 4 and "not run: " in md  # a row per point under the header
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert re.search(r"\|\s+hash\s+\|\s+64x\s+\|\s+6\d\.\dx", capsys.readouterr().out)  # printed table
