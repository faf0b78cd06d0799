"""benchmarks/real_data.py's protocol helpers: what chooses (validation, never test), the
learning-rate grid each compressed method is tuned over, and how a row's reachable maximum is
read from the method's own BudgetError."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
from compactrec.embeddings.budget import BudgetError
from compactrec.embeddings.factory import build_embeddings
from compactrec.trainer.config import CompressionConfig, load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def real_data():
    spec = importlib.util.spec_from_file_location("real_data", REPO / "benchmarks" / "real_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["real_data"] = module  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        yield module
    finally:
        sys.modules.pop("real_data", None)


def test_the_best_epoch_is_chosen_on_validation_not_test(real_data):
    history = [{"epoch": 1, "val": {"auc": 0.70}, "test": {"auc": 0.75}},
               {"epoch": 2, "val": {"auc": 0.72}, "test": {"auc": 0.60}},
               {"epoch": 3, "val": {"auc": 0.71}, "test": {"auc": 0.80}}]
    assert real_data.best_epoch(history)["epoch"] == 2


def test_each_method_is_tuned_at_the_full_rate_and_two_above(real_data):
    grid = lambda full: [float(f"{full * s:.1g}") for s in real_data.METHOD_SPARSE_LR_STEPS]  # noqa: E731
    assert grid(0.03) == [0.03, 0.1, 0.3]  # MovieLens' full-table rate
    assert grid(0.1) == [0.1, 0.3, 1.0]  # flights'


def test_fp16_rows_go_to_the_best_methods_by_mean_validation_auc(real_data):
    def row(method, vals, tests):
        return {"method": method, "runs": [{"val": {"auc": v}, "auc": t} for v, t in zip(vals, tests)]}

    points = {"hash@10x": row("hash", [0.70, 0.70], [0.60, 0.60]), "qr@10x": row("qr", [0.68, 0.69], [0.90, 0.90]),
              "cafe@10x": row("cafe", [0.71, 0.69], [0.50, 0.50]), "qr@10x add": row("qr", [0.99, 0.99], [0.99, 0.99])}
    picked = real_data.fp16_points(points, [10], 2)  # ablation rows ("qr@10x add") do not compete
    assert [p.name for p in picked] == ["hash@10x fp16", "cafe@10x fp16"]
    assert all(p.overrides == {"embedding.precision": "fp16"} for p in picked)


def test_mean_and_sample_std_over_seeds(real_data):
    out = real_data.summarize([{"auc": 0.7, "epoch": 1}, {"auc": 0.8, "epoch": 3}, {"auc": 0.9, "epoch": 2}])
    assert out["auc"] == pytest.approx((0.8, 0.1)) and out["epoch"] == pytest.approx((2.0, 1.0))


@pytest.mark.parametrize("kind", ["qr", "memcom", "mixed_dim", "cafe"])
def test_the_unreachable_row_states_the_methods_own_maximum(real_data, kind):
    schema = FeatureSchema("label", ("int_0",), tuple(SparseFeature(f"cat_{i}", c) for i, c in enumerate((5000, 800, 40))))
    cfg = load_config(None, [f"embedding.kind={kind}"]).embedding
    counts = lambda: {f.name: torch.arange(f.cardinality, 0, -1).numpy() for f in schema.sparse}  # noqa: E731
    with pytest.raises(BudgetError) as e:
        build_embeddings(cfg, CompressionConfig(ratio=5000), schema, 16, torch.device("meta"), counts=counts)
    best = real_data.max_ratio(str(e.value))
    assert best is not None and f"reaches at most {best:.1f}x here" in str(e.value)


def test_rows_compare_with_the_full_table_on_their_own_seeds(real_data):
    from real_data_report import full_auc_on, verdict  # on sys.path once real_data.py is loaded

    full = {"runs": [{"seed": s, "auc": 0.70 + 0.01 * s} for s in range(6)], "summary": {"auc": (0.725, 0.0)}}
    points = {"full": full}
    three = [{"seed": s} for s in range(3)]
    assert full_auc_on(points, three) == pytest.approx(0.71)  # seeds 0-2 only
    assert full_auc_on(points, [{"seed": s} for s in range(6)]) == pytest.approx(0.725)
    assert full_auc_on(points, [{"seed": 9}]) == pytest.approx(0.725)  # no pairing possible: all seeds
    row = {"summary": {"auc": (0.704, 0.0), "logloss": (0.6, 0.0)}, "target": 10.0}
    assert verdict(row, 0.71, 0.69) == "yes" and verdict(row, 0.725, 0.69).startswith("no")  # 0.8% vs 2.9%
