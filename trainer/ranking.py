"""Ranking evaluation: each held-out positive ranked against sampled negatives (nDCG@k, HR@k).

Protocol (sampled negatives, as in NCF, He et al. 2017, with 100 per positive):

1. Positives: every row of the evaluated split (the test split in benchmarks) with label 1,
   in file order. For MovieLens-100K's time split: ratings >= 4 in the last 10% of time.
2. Negatives: for each positive (user u, item i), ``negatives`` (default 100) distinct items
   drawn uniformly without replacement from the items u never rated in ANY split (train,
   val or test: a rated item is never called a negative, whatever its rating).
   ``numpy.random.default_rng(seed)`` (default seed 0) draws them user by user in id order
   (``sample_candidates``), so the candidates do not depend on the model, the method or the
   world size.
3. Candidate rows: (u, item) for the positive and each negative, with the user's features
   from the user side table and the item's from the item side table (``side_tables.py``);
   the model scores each row (its logit).
4. Rank of the positive among its 1 + negatives candidates, 0-based: the number of
   negatives scoring higher, plus a uniformly random place among the ``t`` negatives that
   tie with it, taken in expectation (so a constant scorer gets the chance value
   HR@10 = 10/101, not 0 or 1). HR@k = P(rank < k); nDCG@k = E[1/log2(rank + 2); rank < k]
   (one relevant item, so IDCG = 1). Both are averaged over positives (every positive weighs
   the same; users with more held-out positives weigh more).

Distributed: every rank draws the same candidates, scores the positives ``r::world_size``
in fixed-size batches (the same number of batches on every rank, the tail padded and the
padding dropped, like the eval split), so it runs under DMP with sharded tables as well as
on one process with an unsharded model. Sums are gathered, every rank returns the metrics.

Example::

    m = ranking_metrics(dlrm_scorer(model, env.device), "datasets/movielens", manifest, "test", env)
    m["ndcg@10"], m["hr@10"]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from compactrec.sharding.env import DistEnv, all_gather_object
from compactrec.data.reader import fs
from compactrec.data.reader.batch import Batch
from compactrec.data.reader.columns import log1p_counts
from compactrec.data.reader.manifest import FeatureSchema, Manifest
from compactrec.data.datasets.side_tables import RankingSpec, SideColumns, check_spec, load_side, read_ranking_spec

Scorer = Callable[[Batch], torch.Tensor]  # batch of B rows -> logits (B,)


@dataclass
class Candidates:
    """``users`` (P,) and ``items`` (P, 1 + n): column 0 is the positive, the rest negatives."""

    users: np.ndarray
    items: np.ndarray


def _read_pairs(files: Sequence[str], spec: RankingSpec, label: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(users, items) of the files' rows in order; with ``label``, only rows labelled 1."""
    users, items = [], []
    cols = [spec.user_key, spec.item_key] + ([label] if label else [])
    for path in files:
        t = fs.open_parquet(path).read(columns=cols)
        keep = slice(None) if label is None else t.column(label).to_numpy() == 1
        users.append(t.column(spec.user_key).to_numpy()[keep])
        items.append(t.column(spec.item_key).to_numpy()[keep])
    return np.concatenate(users).astype(np.int64), np.concatenate(items).astype(np.int64)


def sample_candidates(
    pos_users: np.ndarray, pos_items: np.ndarray, rated_users: np.ndarray, rated_items: np.ndarray,
    num_items: int, negatives: int, seed: int,
) -> Candidates:
    """Step 2 of the protocol. ``pos_*`` (P,): the positives; ``rated_*`` (R,): every
    (user, item) pair of every split. Users are visited in id order; a user with q positives
    and n unrated items draws a (q, n) block of uniform keys and each positive takes the
    items of its ``negatives`` smallest keys: a uniform sample without replacement."""
    order = np.lexsort((rated_items, rated_users))
    ru, ri = rated_users[order], rated_items[order]
    rng = np.random.default_rng(seed)
    out = np.empty((len(pos_users), 1 + negatives), np.int64)
    out[:, 0] = pos_items
    for u in np.unique(pos_users).tolist():
        rows = np.flatnonzero(pos_users == u)  # this user's positives, in file order
        a, b = np.searchsorted(ru, u), np.searchsorted(ru, u, side="right")
        pool = np.setdiff1d(np.arange(num_items), ri[a:b])  # (n,) never rated by u
        if len(pool) < negatives:
            raise ValueError(f"user {u} has {len(pool)} unrated items, fewer than {negatives} negatives")
        keys = rng.random((len(rows), len(pool)))  # (q, n)
        out[rows, 1:] = pool[np.argpartition(keys, negatives - 1, axis=1)[:, :negatives]]
    return Candidates(pos_users.copy(), out)


def positive_rank_metrics(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-positive nDCG@k and HR@k from scores (P, 1 + n), column 0 the positive.

    Ties with the positive are broken uniformly at random, in expectation (see step 4).
    """
    pos = scores[:, :1]
    higher = (scores[:, 1:] > pos).sum(1)  # (P,)
    ties = (scores[:, 1:] == pos).sum(1)  # (P,)
    places = torch.arange(scores.shape[1], dtype=torch.float64)  # possible 0-based ranks
    inside = (places[None, :] >= higher[:, None]) & (places[None, :] <= (higher + ties)[:, None])
    weight = inside.double() / (ties + 1).double()[:, None]  # (P, 1 + n): P(rank = place)
    gain = torch.where(places < k, 1.0 / torch.log2(places + 2.0), torch.zeros_like(places))
    ndcg = (weight * gain[None, :]).sum(1)
    hr = (weight * (places < k).double()[None, :]).sum(1)
    return ndcg, hr


def _gather_bags(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    lengths = np.diff(offsets)[rows]
    starts = offsets[:-1][rows]
    idx = np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
    return values[idx], lengths


def candidate_batch(
    schema: FeatureSchema, spec: RankingSpec, user_side: SideColumns, item_side: SideColumns,
    users: np.ndarray, items: np.ndarray, dense_transform: str = "log1p", num_valid: int = -1,
) -> Batch:
    """Rows (users[j], items[j]) as a ``Batch``: dense (B, D), KJT over the schema's sparse
    features (key-major), labels (B,) zeros (unused)."""
    def side_of(name: str) -> Tuple[SideColumns, np.ndarray]:
        return (user_side, users) if name in spec.user.columns else (item_side, items)

    vals: List[np.ndarray] = []
    lens: List[np.ndarray] = []
    for f in schema.sparse:
        side, rows = side_of(f.name)
        if f.name in side.bags:
            v, ln = _gather_bags(*side.bags[f.name], rows)
        else:
            v, ln = side.onehot[f.name][rows], np.ones(len(rows), np.int64)
        vals.append(v)
        lens.append(ln)
    dense = np.zeros((len(users), len(schema.dense)), np.float32)
    for j, name in enumerate(schema.dense):
        side, rows = side_of(name)
        dense[:, j] = side.dense[name][rows]
    if dense_transform == "log1p":  # as the reader does (columns.convert)
        log1p_counts(dense)
    else:
        np.nan_to_num(dense, copy=False, nan=0.0)
    kjt = KeyedJaggedTensor(
        keys=schema.sparse_names,
        values=torch.from_numpy(np.concatenate(vals).astype(np.int64)),
        lengths=torch.from_numpy(np.concatenate(lens).astype(np.int32)),
    )
    return Batch(dense_features=torch.from_numpy(dense), sparse_features=kjt,
                 labels=torch.zeros(len(users)), num_valid=num_valid)


def dlrm_scorer(forward: Callable[[Batch], Any], device: torch.device) -> Scorer:
    """Logits from a ``DLRMTrain`` forward: the (possibly DMP-wrapped) model itself or a dense
    engine's ``forward``, either returning ``(loss, (loss, logits (B,), labels))``."""
    return lambda batch: forward(batch.to(device))[1][1]


def build_candidates(root: str | Path, manifest: Manifest, spec: RankingSpec, split: str,
                     negatives: int, seed: int) -> Candidates:
    """Steps 1-2 of the protocol for ``split`` of the data set at ``root``."""
    label = manifest.schema.label
    pos_u, pos_i = _read_pairs(manifest.split_files(root, split), spec, label)
    all_files = [f for s in manifest.splits for f in manifest.split_files(root, s)]
    rated_u, rated_i = _read_pairs(all_files, spec)
    num_items = next(f.cardinality for f in manifest.schema.sparse if f.name == spec.item_key)
    return sample_candidates(pos_u, pos_i, rated_u, rated_i, num_items, negatives, seed)


def _score_rows(score: Scorer, make: Callable[..., Batch], users: np.ndarray, items: np.ndarray,
                steps: int, batch_size: int) -> torch.Tensor:
    """Scores (R,) of rows (users[j], items[j]) in ``steps`` batches of exactly ``batch_size``
    rows (the tail padded with copies of the first row, or of (0, 0) when R = 0)."""
    pad_u = users[:1] if len(users) else np.zeros(1, np.int64)
    pad_i = items[:1] if len(items) else np.zeros(1, np.int64)
    out: List[torch.Tensor] = [torch.zeros(0)]
    for s in range(steps):
        u, i = users[s * batch_size : (s + 1) * batch_size], items[s * batch_size : (s + 1) * batch_size]
        valid = len(u)
        if valid < batch_size:
            u = np.concatenate([u, np.repeat(pad_u, batch_size - valid)])
            i = np.concatenate([i, np.repeat(pad_i, batch_size - valid)])
        out.append(score(make(u, i, valid))[:valid].float().cpu())
    return torch.cat(out)


@torch.no_grad()
def ranking_metrics(
    score: Scorer, root: str | Path, manifest: Manifest, split: str, env: Optional[DistEnv] = None,
    *, negatives: int = 100, k: int = 10, seed: int = 0, batch_size: int = 4096,
    dense_transform: str = "log1p", model: Optional[nn.Module] = None, candidates: Optional[Candidates] = None,
) -> Dict[str, float]:
    """nDCG@k and HR@k of ``score`` on ``split`` (protocol in the module doc).

    ``model``, when given, is put in eval mode for the scoring and restored after;
    ``candidates`` (from ``build_candidates`` with the same split, negatives and seed) saves
    drawing them again when one data set is ranked many times. Returns
    ``{"ndcg@k", "hr@k", "ranking_positives", "ranking_users", "ranking_negatives"}``.
    Raises ``ValueError`` when the data set's manifest has no ``ranking`` section.
    """
    spec = read_ranking_spec(root)
    if spec is None:
        raise ValueError(f"{root}: the data manifest has no 'ranking' section (user/item side tables)")
    check_spec(spec, manifest.schema, str(root))
    schema = manifest.schema
    user_side, item_side = load_side(root, spec.user, schema), load_side(root, spec.item, schema)
    cands = candidates if candidates is not None else build_candidates(root, manifest, spec, split, negatives, seed)
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    mine = np.arange(rank, len(cands.users), world)  # this rank's positives
    width = cands.items.shape[1]
    per_rank = [len(range(r, len(cands.users), world)) * width for r in range(world)]
    steps = max(-(-n // batch_size) for n in per_rank)  # the same on every rank
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
    make = lambda u, i, valid: candidate_batch(schema, spec, user_side, item_side, u, i, dense_transform, valid)  # noqa: E731
    try:
        scores = _score_rows(score, make, np.repeat(cands.users[mine], width), cands.items[mine].reshape(-1), steps, batch_size)
    finally:
        if model is not None and was_training:
            model.train()
    local = scores.reshape(-1, width)  # (P_r, 1 + n)
    ndcg, hr = positive_rank_metrics(local, k)
    parts = all_gather_object((float(ndcg.sum()), float(hr.sum()), int(local.shape[0])))
    n = sum(p[2] for p in parts)
    return {
        f"ndcg@{k}": sum(p[0] for p in parts) / n if n else math.nan,
        f"hr@{k}": sum(p[1] for p in parts) / n if n else math.nan,
        "ranking_positives": n,
        "ranking_users": int(len(np.unique(cands.users))),
        "ranking_negatives": width - 1,
    }
