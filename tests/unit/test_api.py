"""The Python API for TorchRec users: any method from plain ``EmbeddingBagConfig``s, a drop-in
for an ``EmbeddingBagCollection``; the README's example (examples/torchrec_model.py) runs
and shards with DMP; bad tables and options are clear errors."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import EmbeddingBagConfig, KeyedJaggedTensor

import compactrec.api as cr

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "torchrec_model.py"
TABLES = [EmbeddingBagConfig(name=f"t_{n}", embedding_dim=16, num_embeddings=rows, feature_names=[n])
          for n, rows in [("user", 50_000), ("item", 30_000), ("tiny", 10)]]


def _kjt(batch: int = 6) -> KeyedJaggedTensor:
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([1] * batch + [2] * batch + [0] * (batch - 1) + [1], dtype=torch.int32)
    values = torch.cat([torch.randint(0, 50_000, (batch,), generator=g), torch.randint(0, 30_000, (2 * batch,), generator=g),
                        torch.randint(0, 10, (1,), generator=g)])
    return KeyedJaggedTensor.from_lengths_sync(keys=["user", "item", "tiny"], values=values, lengths=lengths)


@pytest.mark.parametrize("method", cr.METHODS)
def test_every_method_from_plain_torchrec_configs(method: str):
    counts = {t.feature_names[0]: np.random.default_rng(0).integers(0, 50, t.num_embeddings) for t in TABLES}
    emb = cr.compressed_embedding(TABLES, method, ratio=None if method == "full" else 4, id_counts=counts)
    out = emb(_kjt())
    assert out.keys() == ["user", "item", "tiny"] and out.values().shape == (6, 3 * 16)
    assert [c.feature_names for c in emb.embedding_bag_configs()] == [["user"], ["item"], ["tiny"]]
    ratio = cr.size_report(emb, TABLES)["compression_ratio"]
    if method in ("full", "hash", "memcom", "cafe"):
        assert ratio == pytest.approx(1.0 if method == "full" else 4.0, rel=0.05), ratio
    else:  # QR's collisions and MDE's snapped widths move in steps: two tables land above 4x
        assert 3.8 < ratio < 5, ratio
    assert cr.table_parameters(emb)  # the stock tables the fused optimizer takes


@pytest.mark.parametrize("method", ["full", "hash", "robe"])
def test_the_tables_data_type_is_the_methods_precision(method: str):
    from torchrec.modules.embedding_configs import DataType

    half = [EmbeddingBagConfig(name=t.name, embedding_dim=t.embedding_dim, num_embeddings=t.num_embeddings,
                               feature_names=t.feature_names, data_type=DataType.FP16) for t in TABLES]
    emb = cr.compressed_embedding(half, method, ratio=None if method == "full" else 4)
    assert {p.dtype for p in cr.table_parameters(emb)} == {torch.float16}
    assert emb(_kjt()).values().dtype == torch.float32
    ratio = cr.size_report(emb, TABLES)["compression_ratio"]
    assert ratio == pytest.approx(2.0 if method == "full" else 4.0, rel=0.05)
    with pytest.raises(ValueError, match="tables have data types"):
        cr.compressed_embedding([TABLES[0], half[1]], method, ratio=4)


def test_options_reach_the_method():
    emb = cr.compressed_embedding(TABLES, "cafe", ratio=4, options={"levels": 2, "threshold": 5.0})
    assert emb.cfg.levels == 2 and emb.cfg.threshold == 5.0


@pytest.mark.parametrize("tables,kw,needle", [
    ([EmbeddingBagConfig(name="shared", embedding_dim=8, num_embeddings=100, feature_names=["a", "b"])], {}, "one feature per table"),
    ([TABLES[0], EmbeddingBagConfig(name="w", embedding_dim=32, num_embeddings=100, feature_names=["w"])], {}, "widths \\[16, 32\\]"),
    (TABLES, {"options": {"thresholdd": 3}}, "thresholdd"),
    (TABLES, {"ratio": 64, "method": "memcom"}, "cannot reach this ratio"),
    (TABLES, {"method": "lsh"}, "expected one of"),
])
def test_clear_errors(tables, kw, needle):
    kw = {"method": "cafe", "ratio": 4, **kw}
    with pytest.raises(ValueError, match=needle):
        cr.compressed_embedding(tables, kw.pop("method"), **kw)


def test_the_readme_example_runs_and_is_the_readme_text():
    code = EXAMPLE.read_text()
    body = code[code.index("import torch"):]  # the README shows the file from its imports on
    assert body.strip() in (REPO / "README.md").read_text(), "README's Python API example differs from examples/torchrec_model.py"
    r = subprocess.run([sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "embeddings: 8.0x smaller than the full tables" in r.stdout
    losses = [float(x) for x in re.findall(r"step \d: loss ([\d.]+)", r.stdout)]
    assert len(losses) == 5 and all(0.5 < x < 0.9 for x in losses)
