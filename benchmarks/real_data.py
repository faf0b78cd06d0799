"""Every embedding method on real users: MovieLens-100K, ranking and CTR metrics vs the full table.

    OMP_NUM_THREADS=1 nice python benchmarks/real_data.py [--data DIR] [--seeds 0 1 2]
        [--ratios 4 16 40] [--max-epochs 5] [--out benchmarks/results] [--tune-only] [--quick]

Protocol (printed into the Markdown as well):
- Data: ``compactrec data movielens`` (recbole==1.2.1 wheel; label rating >= 4; time split
  80/10/10); fetched and converted into the user cache unless ``--data`` names a folder.
- Model: ``configs/movielens.yaml`` (DLRM, embedding dim 32, 0 dense inputs, batch 256,
  rowwise Adagrad for the tables, Adagrad for the MLPs), one process, DMP over a world of 1.
- Tuning, once, full table only, seed 0, on the VALIDATION split: a 4 x 4 grid of sparse x
  dense learning rates, each trained up to ``--max-epochs`` epochs and scored after every
  epoch; the (sparse lr, dense lr) with the best validation AUC is used for EVERY method.
- Early stopping: every run trains up to ``--max-epochs`` epochs, scores validation and test
  after each, and reports test at the epoch of its best VALIDATION AUC (the test split never
  chooses anything). Without it every method would get the full table's best epoch count.
- Runs: full table; hash, qr, memcom, mixed_dim, cafe at each target ratio (``compression.ratio``,
  every method's default knobs, ``embedding.small_field_rows=24``); seeds 0, 1, 2 (the seed
  sets the initial weights, the reader's shuffle and the methods' hash seeds). A target the
  method cannot build is recorded as "unreachable (max Nx)" from its ``BudgetError``.
- Metrics on TEST: nDCG@10 and HR@10 (``trainer/ranking.py``: 100 sampled unrated negatives
  per positive, seed 0), AUC and logloss over all test rows; achieved ratio = full bytes /
  bytes of the built module (every parameter and buffer). Mean and sample std over seeds;
  relative nDCG loss = 1 - nDCG_method / nDCG_full, AUC gap = AUC_method - AUC_full (means).
- Sanity baseline: one-hot logistic regression (a weight per id + bias) on the same split,
  Adagrad, its learning rate and epochs chosen on validation the same way.

Writes ``OUT/real_data.{json,md,png}`` and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

from compactrec.logs import quiet_third_party  # noqa: E402

quiet_third_party()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from compactrec.embeddings.accounting import embedding_report  # noqa: E402
from compactrec.embeddings.budget import BudgetError  # noqa: E402
from compactrec.sharding.env import DistEnv, close_process_group, current_env, free_port, init_process_group  # noqa: E402
from compactrec.sharding.shard import shard_model  # noqa: E402
from compactrec.trainer.config import RunConfig, load_config, with_overrides  # noqa: E402
from compactrec.data.reader.batch import Batch  # noqa: E402
from compactrec.data.reader.manifest import FeatureSchema, Manifest, manifest_path, read_manifest  # noqa: E402
from compactrec.data.datasets.side_tables import read_ranking_spec  # noqa: E402
from compactrec.trainer.dense_engine import build_dense_engine  # noqa: E402
from compactrec.io import atomic_write_json, atomic_write_text  # noqa: E402
from compactrec.trainer.loop import build_train_model, make_readers  # noqa: E402
from compactrec.trainer.metrics import ctr_metrics  # noqa: E402
from compactrec.trainer.model import embedding_module  # noqa: E402
from compactrec.trainer.ranking import Candidates, Scorer, build_candidates, dlrm_scorer, ranking_metrics  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "movielens.yaml"
METHODS = ("hash", "qr", "memcom", "mixed_dim", "cafe")
SPARSE_LRS = (0.003, 0.01, 0.03, 0.1)
DENSE_LRS = (0.003, 0.01, 0.03, 0.1)
LOGREG_LRS = (0.01, 0.03, 0.1, 0.3)
CLAIMS = [
    ("MEmCom (Pansare et al., MLSys 2022)", "4% relative nDCG loss at 16x/4x/12x/40x on its four datasets"),
    ("MDE (Ginart et al., ISIT 2021)", "equal accuracy with 16x fewer parameters on Criteo Kaggle"),
    ("CAFE (Zhang et al., SIGMOD 2024)", "higher AUC than hash / QR / MDE at high compression ratios"),
]


# ---------------------------------------------------------------------------- data + config


def prepare_data(data: Optional[str]) -> Path:
    """The converted data set: ``data`` if given, else the user cache (never the repo)."""
    from compactrec.data.datasets.movielens import convert_ml100k
    from compactrec.data.datasets.recbole_wheel import cache_dir, fetch_ml100k

    root = Path(data) if data else cache_dir() / "movielens-100k"
    if not manifest_path(root).exists():
        convert_ml100k(fetch_ml100k(), root)
    return root


def run_config(base: RunConfig, **dotted: Any) -> RunConfig:
    return with_overrides(base, dotted)


def seeded(cfg: RunConfig, seed: int) -> RunConfig:
    """Seed the weights and the shuffle, and every method's hash seed."""
    return run_config(cfg, **{"trainer.seed": seed, "embedding.hash.seed": seed,
                              "embedding.memcom.seed": seed, "embedding.cafe.seed": seed})


# ---------------------------------------------------------------------------- training




Evaluator = Callable[[str, Optional[nn.Module], Scorer], Dict[str, Any]]


def make_evaluator(cfg: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Candidates]) -> Evaluator:
    """``evaluate(split, model, scorer)``: CTR metrics over the split's rows + ranking metrics
    (``cands[split]``), and ranking metrics ``*_warm`` on ``cands[split + "_warm"]`` if given."""
    readers = {s: make_readers(run_config(cfg, **{"data.eval_split": s}), manifest, env)[1]
               for s in cands if not s.endswith("_warm")}

    def run(split: str, model: Optional[nn.Module], score: Scorer) -> Dict[str, Any]:
        with torch.no_grad():
            if model is not None:
                model.eval()
            pairs = [(b.labels[: b.valid_rows], score(b)[: b.valid_rows].float()) for b in readers[split].epoch(0)]
            if model is not None:
                model.train()
        m: Dict[str, Any] = ctr_metrics(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]))
        m.update(ranking_metrics(score, cfg.data.path, manifest, split, env, model=model, candidates=cands[split],
                                 dense_transform=cfg.data.dense_transform))
        if split + "_warm" in cands:
            warm = ranking_metrics(score, cfg.data.path, manifest, split, env, model=model,
                                   candidates=cands[split + "_warm"], dense_transform=cfg.data.dense_transform)
            m.update({f"{k}_warm": warm[k] for k in ("ndcg@10", "hr@10", "ranking_positives")})
        return m

    return run


def train_dlrm(cfg: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Candidates]) -> Dict[str, Any]:
    """The steps of ``trainer.loop.train`` (same builders, readers, sharding, dense engine), with
    CTR + ranking metrics on every split of ``cands`` after every epoch."""
    unsharded = build_train_model(cfg, manifest)
    sizes = embedding_report(embedding_module(unsharded), manifest.schema, cfg.model.embedding_dim)
    model = shard_model(unsharded, cfg.sharding.types, cfg.sharding.per_table, env)
    engine = build_dense_engine(cfg.dense, cfg.optim, model, env)  # DDP engine: DMP's DDP + Adagrad
    train_reader = make_readers(cfg, manifest, env)[0]
    evaluate_on = make_evaluator(cfg, manifest, env, cands)
    history, t0 = [], time.perf_counter()
    for epoch in range(cfg.trainer.epochs):
        for batch in train_reader.epoch(epoch):
            loss, _ = engine.forward(batch.to(env.device))
            engine.zero_grad()
            engine.backward(loss)
            engine.step()
        score = dlrm_scorer(engine.forward, env.device)
        history.append({"epoch": epoch + 1, **{s: evaluate_on(s, model, score) for s in _splits(cands)}})
    return {**sizes, "history": history, "seconds": time.perf_counter() - t0}


class OneHotLogReg(nn.Module):
    """logit = b + sum_f sum_{i in bag_f} w_f[i] (+ v . dense): one weight per id."""

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


def train_logreg(cfg: RunConfig, manifest: Manifest, env: DistEnv, lr: float, cands: Dict[str, Candidates]) -> Dict[str, Any]:
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
        history.append({"epoch": epoch + 1, **{s: evaluate_on(s, model, model) for s in _splits(cands)}})
    return {"history": history}


def _splits(cands: Dict[str, Candidates]) -> List[str]:
    return [s for s in cands if not s.endswith("_warm")]


def warm_candidates(root: Path, manifest: Manifest, cands: Candidates, user_key: str) -> Candidates:
    """The candidates of positives whose user has at least one TRAIN rating (a "warm" user);
    with a time split most test users are new (their id rows never trained)."""
    from compactrec.data.reader import fs

    seen = np.unique(np.concatenate([fs.open_parquet(f).read(columns=[user_key]).column(user_key).to_numpy()
                                     for f in manifest.split_files(root, "train")]))
    keep = np.isin(cands.users, seen)
    return Candidates(cands.users[keep], cands.items[keep])


def best_epoch(history: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The epoch with the best validation AUC (early stopping on validation)."""
    return max(history, key=lambda h: h["val"]["auc"])


# ---------------------------------------------------------------------------- tuning


def tune(base: RunConfig, manifest: Manifest, env: DistEnv, cands: Dict[str, Candidates],
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


def _brief(m: Dict[str, Any]) -> str:
    return f"AUC {m['auc']:.4f} logloss {m['logloss']:.4f} nDCG@10 {m['ndcg@10']:.4f} HR@10 {m['hr@10']:.4f}"


def _pick(m: Dict[str, Any]) -> Dict[str, Any]:
    return {k: m[k] for k in ("auc", "logloss", "ndcg@10", "hr@10", "ndcg@10_warm", "hr@10_warm") if k in m}


# ---------------------------------------------------------------------------- runs


def max_ratio(message: str) -> Optional[float]:
    """The reachable maximum a ``BudgetError`` names ("... 12.9x at most"), if any."""
    found = re.findall(r"(\d+(?:\.\d+)?)x\b", message)
    return float(found[-1]) if found else None


def run_point(cfg: RunConfig, manifest: Manifest, env: DistEnv, seeds: Sequence[int],
              cands: Dict[str, Candidates]) -> Dict[str, Any]:
    """One (method, ratio) over ``seeds``: per-seed test metrics at the best validation epoch,
    or why the method cannot be built at this ratio."""
    runs = []
    for seed in seeds:
        try:
            out = train_dlrm(seeded(cfg, seed), manifest, env, cands)
        except BudgetError as e:
            return {"unreachable": str(e), "max_ratio": max_ratio(str(e))}
        best = best_epoch(out["history"])
        runs.append({"seed": seed, "epoch": best["epoch"], "compression_ratio": out["compression_ratio"],
                     "embedding_bytes": out["embedding_bytes"], "seconds": out["seconds"],
                     **_pick(best["test"]), "val": _pick(best["val"]),
                     "curve": [{"epoch": h["epoch"], **{s: _pick(h[s]) for s in _splits(cands)}} for h in out["history"]]})
    return {"runs": runs}


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Tuple[float, float]]:
    """Mean and sample std over seeds of each metric."""
    out = {}
    for key in ("ndcg@10", "hr@10", "auc", "logloss", "ndcg@10_warm", "hr@10_warm", "compression_ratio", "epoch"):
        vals = [r[key] for r in runs if r.get(key) is not None]
        if vals:
            out[key] = (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
    return out


# ---------------------------------------------------------------------------- report


def _pm(stat: Optional[Tuple[float, float]], digits: int = 4) -> str:
    return "-" if stat is None else f"{stat[0]:.{digits}f} ± {stat[1]:.{digits}f}"


def markdown(results: Dict[str, Any]) -> str:
    full = results["points"]["full"]["summary"]
    head = ("| method | target | achieved ratio | nDCG@10 | HR@10 | AUC | logloss | rel. nDCG loss vs full | AUC gap vs full "
            "| nDCG@10 warm users | epochs |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for key, point in results["points"].items():
        method, target = point["method"], point["target"]
        tgt = "-" if target is None else f"{target:g}x"
        if "unreachable" in point:
            mx = point["max_ratio"]
            why = f"unreachable (max {mx:.1f}x)" if mx else "unreachable"
            lines.append(f"| {method} | {tgt} | {why} |" + " |" * 8)
            continue
        s = point["summary"]
        ratio = "-" if "compression_ratio" not in s else f"{s['compression_ratio'][0]:.2f}x"
        loss = gap = "-"
        if method not in ("full",):
            loss = f"{100 * (1 - s['ndcg@10'][0] / full['ndcg@10'][0]):+.1f}%"
            gap = f"{s['auc'][0] - full['auc'][0]:+.4f}"
        epochs = "/".join(str(r["epoch"]) for r in point["runs"])
        lines.append(f"| {method} | {tgt} | {ratio} | {_pm(s['ndcg@10'])} | {_pm(s['hr@10'])} | {_pm(s['auc'])} "
                     f"| {_pm(s['logloss'])} | {loss} | {gap} | {_pm(s.get('ndcg@10_warm'))} | {epochs} |")
    return "\n".join(lines)


def protocol_text(results: Dict[str, Any]) -> str:
    t = results["tuning"]
    f, lg = t["full"], t["logreg"]
    return (
        f"MovieLens-100K (recbole==1.2.1 wheel), label rating >= 4, time split 80/10/10 (train/val/test). "
        f"Test: {results['test_positives']} positives of {results['test_users']} users, each ranked against 100 "
        f"unrated items sampled with seed 0 ('warm users': the {results['test_warm_positives']} positives of the "
        f"{results['test_warm_users']} test users who have train ratings; the others are new users whose id rows "
        f"never trained), "
        f"AUC / logloss over all 10,000 test ratings. DLRM, embedding dim "
        f"{results['dim']}, batch 256, rowwise Adagrad (tables) + Adagrad (MLPs). Learning rates tuned once, on the "
        f"validation split, for the full table: sparse {f['sparse_lr']}, dense {f['dense_lr']} (val AUC {f['auc']:.4f} "
        f"at epoch {f['epoch']}), then used for every method. Every run trains up to {results['max_epochs']} epochs and "
        f"reports test at its best-validation-AUC epoch (the 'epochs' column). Logistic regression (one weight per id): "
        f"Adagrad lr {lg['lr']}, same early stopping. Seeds {results['seeds']} (weights, shuffle, hash seeds): "
        f"mean ± sample std. embedding.small_field_rows=24 (gender, occupation, genres keep full tables; counted in the "
        f"ratio). Relative nDCG loss = 1 - nDCG/nDCG_full; AUC gap = AUC - AUC_full (means). Runtime "
        f"{results['runtime_s'] / 60:.1f} min, 1 CPU thread."
    )


def plot(results: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "ndcg@10", "test nDCG@10"), (axes[1], "auc", "test AUC")):
        for ref, style in (("full", "k-"), ("logreg", "k:")):
            m, s = results["points"][ref]["summary"][key]
            ax.axhline(m, color="k", ls=style[1:], lw=1, label=f"{ref} ({m:.3f})")
            ax.axhspan(m - s, m + s, color="k", alpha=0.08)
        for method in METHODS:
            pts = [p for p in results["points"].values() if p["method"] == method and "summary" in p]
            if pts:
                xs = [p["summary"]["compression_ratio"][0] for p in pts]
                ax.errorbar(xs, [p["summary"][key][0] for p in pts], yerr=[p["summary"][key][1] for p in pts],
                            marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ticks = [1.0, *results["ratios"]]
        ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("achieved compression ratio (log scale)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"MovieLens-100K, time split, mean ± std over seeds {results['seeds']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------- main


def _points(args: argparse.Namespace) -> List[Tuple[str, Optional[float]]]:
    return [("full", None)] + [(m, r) for m in METHODS for r in args.ratios]


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="converted data folder (default: the user cache)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--ratios", type=float, nargs="+", default=[4.0, 16.0, 40.0])
    ap.add_argument("--max-epochs", type=int, default=5)
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    ap.add_argument("--tune-only", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 ratio, 2 epochs, no grid")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.ratios, args.max_epochs = args.seeds[:1], args.ratios[:1], 2
    t0 = time.perf_counter()
    log = lambda msg: print(f"[{time.perf_counter() - t0:7.1f}s] {msg}", flush=True)  # noqa: E731
    torch.set_num_threads(1)
    data = prepare_data(args.data)
    base = load_config(CONFIG, [f"data.path={data}", "trainer.progress_bar=false", "trainer.tensorboard=false",
                                f"trainer.epochs={args.max_epochs}"])
    manifest = read_manifest(data)
    spec = read_ranking_spec(data)
    cands = {s: build_candidates(data, manifest, spec, s, 100, 0) for s in ("val", "test")}
    cands["test_warm"] = warm_candidates(data, manifest, cands["test"], spec.user_key)
    init_process_group(0, 1, free_port())
    try:
        env = current_env("cpu")
        if args.quick:
            tuning = {"full": {"sparse_lr": base.optim.sparse_lr, "dense_lr": base.optim.dense_lr, "epoch": 0, "auc": math.nan},
                      "logreg": {"lr": 0.1, "epoch": 0, "auc": math.nan}}
        else:
            tuning = tune(base, manifest, env, cands, log)
        log(f"tuned: full {tuning['full']}  logreg {tuning['logreg']}")
        if args.tune_only:
            print(json.dumps(tuning, indent=1))
            return 0
        f = tuning["full"]
        tuned = run_config(base, **{"optim.sparse_lr": f["sparse_lr"], "optim.dense_lr": f["dense_lr"]})
        points: Dict[str, Any] = {}
        for method, ratio in _points(args):
            cfg = run_config(tuned, **{"embedding.kind": method, "compression.ratio": ratio})
            point = {"method": method, "target": ratio, **run_point(cfg, manifest, env, args.seeds, cands)}
            if "runs" in point:
                point["summary"] = summarize(point["runs"])
            points[f"{method}@{ratio:g}x" if ratio else method] = point
            log(f"{method} {ratio}: " + (point.get("unreachable") or _summary_line(point["summary"])))
        runs = []
        for seed in args.seeds:
            best = best_epoch(train_logreg(seeded(tuned, seed), manifest, env, tuning["logreg"]["lr"], cands)["history"])
            runs.append({"seed": seed, "epoch": best["epoch"], **_pick(best["test"]), "val": _pick(best["val"])})
        points["logreg"] = {"method": "one-hot logistic regression", "target": None, "runs": runs, "summary": summarize(runs)}
        log(f"logreg: {_summary_line(points['logreg']['summary'])}")
    finally:
        close_process_group()
    results = {"points": points, "tuning": tuning, "seeds": args.seeds, "ratios": args.ratios, "dim": base.model.embedding_dim,
               "max_epochs": args.max_epochs, "test_positives": int(len(cands["test"].users)),
               "test_warm_positives": int(len(cands["test_warm"].users)),
               "test_warm_users": int(len(set(cands["test_warm"].users.tolist()))),
               "test_users": int(len(set(cands["test"].users.tolist()))), "runtime_s": time.perf_counter() - t0,
               "torch": torch.__version__, "argv": sys.argv[1:]}
    out = Path(args.out)
    text = f"{protocol_text(results)}\n\n{markdown(_ordered(results))}\n"
    atomic_write_json(out / "real_data.json", results)
    atomic_write_text(out / "real_data.md", text)
    plot(results, out / "real_data.png")
    print(text)
    return 0


def _summary_line(summary: Dict[str, Tuple[float, float]]) -> str:
    return "  ".join(f"{k} {m:.4f}±{sd:.4f}" for k, (m, sd) in summary.items())


def _ordered(results: Dict[str, Any]) -> Dict[str, Any]:
    """Logistic regression and full first, then methods in order."""
    pts = results["points"]
    keys = ["logreg", "full"] + [k for k in pts if k not in ("logreg", "full")]
    return {**results, "points": {k: pts[k] for k in keys}}


if __name__ == "__main__":
    sys.exit(main())
