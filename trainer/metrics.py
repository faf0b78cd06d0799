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
