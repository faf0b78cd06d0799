"""Metrics against brute-force definitions."""

from __future__ import annotations

import itertools
import math

import torch

from compactrec.trainer.metrics import auc, ctr_metrics, logloss, normalized_entropy


def test_auc_equals_pairwise_definition_with_ties():
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(60, generator=g) < 0.4).long()
    s = torch.round(torch.rand(60, generator=g) * 5) / 5  # many ties
    pos = [float(a) for a, l in zip(s, y) if l == 1]
    neg = [float(a) for a, l in zip(s, y) if l == 0]
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0) for p, n in itertools.product(pos, neg)]
    assert abs(auc(y, s) - sum(pairs) / len(pairs)) < 1e-6


def test_auc_undefined_with_one_class():
    assert math.isnan(auc(torch.zeros(5), torch.rand(5)))


def test_constant_ctr_predictor_has_ne_one():
    y = torch.tensor([1, 0, 0, 0] * 25)
    p = torch.full((100,), 0.25)
    assert abs(normalized_entropy(y, p) - 1.0) < 1e-9
    assert abs(logloss(y, p) - (-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))) < 1e-9


def test_ctr_metrics_from_logits():
    y = torch.tensor([0, 1, 0, 1])
    m = ctr_metrics(y, torch.tensor([-2.0, 2.0, -1.0, 1.0]))
    assert m["auc"] == 1.0 and m["ne"] < 0.5 and m["eval_rows"] == 4


def test_binned_metrics_merge_across_ranks_and_match_the_exact_ones():
    from compactrec.trainer.metrics import ctr_metrics_from_sums, ctr_sums

    g = torch.Generator().manual_seed(1)
    z = torch.randn(50_000, generator=g) * 2
    y = (torch.rand(50_000, generator=g) < torch.sigmoid(z)).long()
    exact = ctr_metrics(y, z)
    merged = ctr_metrics_from_sums(ctr_sums(y[:20_000], z[:20_000]) + ctr_sums(y[20_000:], z[20_000:]))
    assert abs(merged["auc"] - exact["auc"]) < 1e-4
    for key in ("logloss", "ne", "ctr"):
        assert abs(merged[key] - exact[key]) < 1e-9, key
    assert merged["eval_rows"] == 50_000
