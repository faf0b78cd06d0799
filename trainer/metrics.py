"""CTR metrics: AUC, logloss and normalized entropy (NE).

NE = logloss / H(p), H the entropy of the eval set's click rate p: a model that always
predicts the click rate has NE 1, lower is better (He et al., ADKDD 2014).
"""

from __future__ import annotations

import math
from typing import Dict

import torch
from torchmetrics.functional.classification import binary_auroc

_EPS = 1e-7


def auc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Area under the ROC curve; ties in ``scores`` count half. Shapes: (N,), (N,)."""
    labels = labels.reshape(-1).long()
    if labels.numel() == 0 or labels.min() == labels.max():
        return float("nan")  # undefined with one class
    return float(binary_auroc(scores.reshape(-1).float(), labels))


def logloss(labels: torch.Tensor, probs: torch.Tensor) -> float:
    p = probs.reshape(-1).double().clamp(_EPS, 1 - _EPS)
    y = labels.reshape(-1).double()
    return float(-(y * p.log() + (1 - y) * (1 - p).log()).mean())


def normalized_entropy(labels: torch.Tensor, probs: torch.Tensor) -> float:
    ctr = float(labels.double().mean())
    ctr = min(max(ctr, _EPS), 1 - _EPS)
    h = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    return logloss(labels, probs) / h


BINS = 1 << 16


def ctr_sums(labels: torch.Tensor, logits: torch.Tensor, bins: int = BINS) -> torch.Tensor:
    """Mergeable summary of one rank's predictions, (2 * bins + 3,) float64: histograms of
    the click probability for positives and negatives, summed log-likelihood, rows, clicks.
    Summing it over ranks (one all_reduce) gives every CTR metric of the union."""
    p = torch.sigmoid(logits.reshape(-1).double())
    y = labels.reshape(-1).double()
    idx = (p * bins).long().clamp_(0, bins - 1)
    out = torch.zeros(2 * bins + 3, dtype=torch.float64)
    out[:bins].index_add_(0, idx, y)
    out[bins : 2 * bins].index_add_(0, idx, 1 - y)
    q = p.clamp(_EPS, 1 - _EPS)
    out[-3] = (y * q.log() + (1 - y) * (1 - q).log()).sum()
    out[-2], out[-1] = y.numel(), y.sum()
    return out


def ctr_metrics_from_sums(sums: torch.Tensor, bins: int = BINS) -> Dict[str, float]:
    """Metrics from summed ``ctr_sums``. AUC by bins (ties within a bin count half): with
    2^16 bins it differs from the exact AUC by less than 1e-4 (tested)."""
    pos, neg = sums[:bins], sums[bins : 2 * bins]
    n_pos, n_neg, rows = float(pos.sum()), float(neg.sum()), float(sums[-2])
    below = torch.cumsum(neg, 0) - neg  # negatives in lower bins
    auc_value = float((pos * (below + 0.5 * neg)).sum() / (n_pos * n_neg)) if n_pos and n_neg else float("nan")
    ll = float(-sums[-3] / rows)
    ctr = min(max(float(sums[-1]) / rows, _EPS), 1 - _EPS)
    h = -(ctr * math.log(ctr) + (1 - ctr) * math.log(1 - ctr))
    return {"auc": auc_value, "logloss": ll, "ne": ll / h, "ctr": float(sums[-1]) / rows, "eval_rows": int(rows)}


def ctr_metrics(labels: torch.Tensor, logits: torch.Tensor) -> Dict[str, float]:
    """AUC, logloss, NE and click rate from labels (N,) in {0, 1} and logits (N,)."""
    probs = torch.sigmoid(logits.double())
    return {
        "auc": auc(labels, probs),
        "logloss": logloss(labels, probs),
        "ne": normalized_entropy(labels, probs),
        "ctr": float(labels.double().mean()),
        "eval_rows": int(labels.numel()),
    }
