"""Ranking evaluation: rank metrics by hand, negative sampling rules, candidate rows equal
the reader's rows, the rank split that DMP uses, and a real model scoring candidates."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from compactrec.sharding.env import DistEnv
from compactrec.trainer.config import load_config
from compactrec.data.reader.manifest import read_manifest
from compactrec.data.reader.parquet import ParquetReader
from compactrec.data.datasets.side_tables import load_side, read_ranking_spec
from compactrec.trainer.ranking import (
    build_candidates,
    candidate_batch,
    dlrm_scorer,
    positive_rank_metrics,
    ranking_metrics,
    sample_candidates,
)
from tests.unit.test_movielens import make_tiny_movielens


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_movielens(tmp_path_factory.mktemp("tiny_ml"))


def test_rank_metrics_by_hand():
    scores = torch.tensor([
        [9.0, 1, 2, 3, 4],  # best: rank 0
        [2.5, 1, 2, 3, 4],  # two negatives higher: rank 2
        [0.0, 1, 2, 3, 4],  # last: rank 4
    ])
    ndcg, hr = positive_rank_metrics(scores, k=3)
    assert torch.allclose(ndcg, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))  # 1/log2(2 + 2)
    assert hr.tolist() == [1.0, 1.0, 0.0]


def test_ties_count_as_a_random_place():
    ndcg, hr = positive_rank_metrics(torch.zeros(1, 101), k=10)  # a constant scorer
    assert hr.item() == pytest.approx(10 / 101)
    assert ndcg.item() == pytest.approx(sum(1 / math.log2(r + 2) for r in range(10)) / 101)
    ndcg, hr = positive_rank_metrics(torch.tensor([[1.0, 2.0, 1.0, 0.0]]), k=2)  # rank 1 or 2
    assert hr.item() == pytest.approx(0.5) and ndcg.item() == pytest.approx(0.5 / math.log2(3))


def test_negatives_are_unrated_distinct_and_seeded():
    rated_u = np.array([0, 0, 0, 1, 1])
    rated_i = np.array([0, 1, 2, 3, 4])
    pos_u, pos_i = np.array([0, 0, 1]), np.array([1, 2, 4])
    c = sample_candidates(pos_u, pos_i, rated_u, rated_i, num_items=10, negatives=5, seed=3)
    assert c.items.shape == (3, 6) and c.items[:, 0].tolist() == [1, 2, 4]
    for u, row in zip(pos_u, c.items):
        negs = row[1:]
        assert len(set(negs.tolist())) == 5
        assert not set(negs.tolist()) & set(rated_i[rated_u == u].tolist())
    again = sample_candidates(pos_u, pos_i, rated_u, rated_i, 10, 5, seed=3)
    other = sample_candidates(pos_u, pos_i, rated_u, rated_i, 10, 5, seed=4)
    assert np.array_equal(c.items, again.items) and not np.array_equal(c.items, other.items)
    with pytest.raises(ValueError, match="user 0 has 7 unrated items, fewer than 8"):
        sample_candidates(pos_u, pos_i, rated_u, rated_i, 10, 8, seed=3)


def test_candidates_exclude_every_split_and_positive_rows_match_the_reader(tiny: Path):
    m = read_manifest(tiny)
    spec = read_ranking_spec(tiny)
    cands = build_candidates(tiny, m, spec, "test", negatives=3, seed=0)
    reader = ParquetReader(m.split_files(tiny, "test"), m.schema, batch_size=4)
    test = next(iter(reader))
    positives = test.labels.numpy() == 1
    assert len(cands.users) == int(positives.sum()) > 0
    rated = set()
    for s in m.splits:
        r = ParquetReader(m.split_files(tiny, s), m.schema, batch_size=m.splits[s].rows)
        kjt = next(iter(r)).sparse_features.to_dict()
        rated |= set(zip(kjt["user_id"].values().tolist(), kjt["item_id"].values().tolist()))
    for u, row in zip(cands.users, cands.items):
        assert all((int(u), int(i)) not in rated for i in row[1:])
    users, items = load_side(tiny, spec.user, m.schema), load_side(tiny, spec.item, m.schema)
    batch = candidate_batch(m.schema, spec, users, items, cands.users, cands.items[:, 0], "none")
    want, got = test.sparse_features.to_dict(), batch.sparse_features.to_dict()
    rows = np.flatnonzero(positives)
    for name in m.schema.sparse_names:  # the positive candidate is exactly the test row
        w = [want[name].values()[want[name].offsets()[r] : want[name].offsets()[r + 1]].tolist() for r in rows]
        g = [got[name].values()[got[name].offsets()[j] : got[name].offsets()[j + 1]].tolist() for j in range(len(rows))]
        assert w == g, name
    assert batch.dense_features.shape == (len(rows), 0)


def test_oracle_and_constant_scorers_and_the_rank_split(tiny: Path):
    m = read_manifest(tiny)
    cands = build_candidates(tiny, m, read_ranking_spec(tiny), "test", negatives=3, seed=0)
    positives = set(zip(cands.users.tolist(), cands.items[:, 0].tolist()))

    def oracle(batch):
        kjt = batch.sparse_features.to_dict()
        pairs = zip(kjt["user_id"].values().tolist(), kjt["item_id"].values().tolist())
        return torch.tensor([1.0 if p in positives else 0.0 for p in pairs])

    best = ranking_metrics(oracle, tiny, m, "test", negatives=3, k=2, batch_size=3)
    assert best["ndcg@2"] == 1.0 and best["hr@2"] == 1.0 and best["ranking_positives"] == len(positives)
    flat = ranking_metrics(lambda b: torch.zeros(b.labels.shape[0]), tiny, m, "test", negatives=3, k=2)
    assert flat["hr@2"] == pytest.approx(2 / 4)
    calls = []  # two ranks (no process group: each sees only its own sums) score disjoint positives
    counting = lambda b: calls.append(b.labels.shape[0]) or torch.rand(b.labels.shape[0])  # noqa: E731
    halves = [ranking_metrics(counting, tiny, m, "test", DistEnv(r, 2, r, torch.device("cpu")), negatives=3, batch_size=2)
              for r in range(2)]
    assert sum(h["ranking_positives"] for h in halves) == len(positives)
    assert set(calls) == {2} and len(calls) % 2 == 0  # fixed batch size, the same step count per rank


def test_real_dlrm_scores_candidates_and_keeps_train_mode(tiny: Path):
    from compactrec.trainer.loop import build_train_model

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "movielens.yaml", [f"data.path={tiny}"])
    m = read_manifest(tiny)
    model = build_train_model(cfg, m)
    model.train()
    out = ranking_metrics(dlrm_scorer(model, torch.device("cpu")), tiny, m, "test", negatives=3, k=2, model=model)
    assert 0.0 <= out["ndcg@2"] <= out["hr@2"] <= 1.0
    assert model.training
