"""Quality of every method at 4x, 16x, 64x and 256x on the synthetic planted data.

    python benchmarks/quality.py [--rows 1000000] [--epochs 1] [--seeds 0 1 2]
        [--robe-ratios 10 50 100 1000] [--fp16-best 2] [--fp16-ratios 16 64]

Data: synthetic Criteo-shaped shards (``data/datasets/synthetic.py``) whose labels come from a
planted teacher, so the Bayes AUC (the teacher's own AUC) is known. Each method is trained
with the same model, optimizer and data (local launcher, 1 worker, 1 thread); a ratio a
method cannot reach is recorded as such (its planner says its maximum). ROBE also runs at
``--robe-ratios`` (any ratio is reachable). Reduced precision: the ``--fp16-best`` methods
with the best mean AUC at the first ``--fp16-ratios`` ratio (chosen from this run's fp32 rows)
run again with ``embedding.precision=fp16`` at each of those ratios: the same bytes, with
fp16 tables. Output: the AUC,
logloss, the gap to the full table and to the Bayes AUC, as JSON + Markdown + a PNG plot of
AUC vs achieved ratio, under benchmarks/results/quality.*.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

os.environ.setdefault("OMP_NUM_THREADS", "1")

from compactrec.cluster.sweep import run_sweep  # noqa: E402
from compactrec.logs import quiet_third_party  # noqa: E402
from compactrec.trainer.config import load_config  # noqa: E402
from compactrec.io import atomic_write, atomic_write_json, atomic_write_text  # noqa: E402

METHODS = ["full", "hash", "qr", "memcom", "mixed_dim", "cafe", "robe"]
RATIOS = [4, 16, 64, 256]
OUT = Path(__file__).resolve().parent / "results"


def _points(rows: List[Dict[str, Any]]) -> Dict[tuple, List[Dict[str, Any]]]:
    by: Dict[tuple, List[Dict[str, Any]]] = {}
    for r in rows:
        kind = r["embedding.kind"]
        ratio = 1 if kind == "full" else r["compression.ratio"]
        by.setdefault((kind, ratio, r.get("precision", "fp32")), []).append(r)
    return by


def summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean (and spread over seeds) per (method, ratio), with the gaps to full and Bayes."""
    out = []
    by = _points(rows)
    full_auc = statistics.mean(r["auc"] for r in by[("full", 1, "fp32")])
    for (kind, ratio, precision), rs in by.items():
        ok = [r for r in rs if "error" not in r]
        row: Dict[str, Any] = {"method": kind, "ratio": ratio, "precision": precision, "seeds": len(rs)}
        if not ok:
            row["note"] = rs[0]["error"]
        else:
            aucs = [r["auc"] for r in ok]
            row.update(
                auc=statistics.mean(aucs),
                auc_std=statistics.pstdev(aucs) if len(aucs) > 1 else 0.0,
                logloss=statistics.mean(r["logloss"] for r in ok),
                built_ratio=statistics.mean(r["compression_ratio"] for r in ok),
                bayes_auc=ok[0]["bayes_auc"],
                gap_full=statistics.mean(aucs) - full_auc,
                gap_bayes=statistics.mean(aucs) - ok[0]["bayes_auc"],
                samples_per_s=statistics.mean(r["samples_per_s"] for r in ok),
            )
        out.append(row)
    return sorted(out, key=lambda r: (METHODS.index(r["method"]), r["precision"] != "fp32", r["ratio"]))


def best_methods(summary: List[Dict[str, Any]], ratio: float, n: int) -> List[str]:
    """The ``n`` compressed methods with the best mean AUC at ``ratio`` (fp32 rows)."""
    at = [r for r in summary if r["ratio"] == ratio and r["precision"] == "fp32" and r["method"] != "full" and "auc" in r]
    return [r["method"] for r in sorted(at, key=lambda r: -r["auc"])[:n]]


def markdown(summary: List[Dict[str, Any]]) -> str:
    lines = [
        "| method | tables | ratio asked | ratio built | AUC | ± (seeds) | logloss | AUC - full | AUC - Bayes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "note" in r:
            lines.append(f"| {r['method']} | {r['precision']} | {r['ratio']}x | - | unreachable: "
                         f"{r['note'].split(': ', 1)[-1]} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['precision']} | {r['ratio']}x | {r['built_ratio']:.1f}x | {r['auc']:.4f} | "
            f"{r['auc_std']:.4f} ({r['seeds']}) | {r['logloss']:.4f} | {r['gap_full']:+.4f} | {r['gap_bayes']:+.4f} |"
        )
    return "\n".join(lines)


def plot(summary: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [r for r in summary if "auc" in r]
    colors = {kind: f"C{i}" for i, kind in enumerate(METHODS)}
    for kind in METHODS:
        for precision, style in (("fp32", "-"), ("fp16", "--")):
            pts = sorted((r["built_ratio"], r["auc"], r["auc_std"]) for r in ok
                         if r["method"] == kind and r["precision"] == precision)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                            color=colors[kind], linestyle=style, label=kind if precision == "fp32" else f"{kind} fp16")
    if ok:
        ax.axhline(ok[0]["bayes_auc"], color="gray", linestyle="--", label="Bayes AUC (teacher)")
    ax.set(xscale="log", xlabel="compression ratio (bytes of the built module)", ylabel="eval AUC",
           title="Synthetic planted data: AUC vs compression")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--epochs", type=int, default=1)  # a second epoch overfits the full table (see README)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--ratios", type=int, nargs="+", default=RATIOS)
    p.add_argument("--robe-ratios", type=int, nargs="*", default=[10, 50, 100, 1000])
    p.add_argument("--fp16-best", type=int, default=2, help="fp16 variants of this many best methods (0: none)")
    p.add_argument("--fp16-ratios", type=int, nargs="*", default=[16, 64])
    p.add_argument("--data", default="datasets/bench_quality")
    p.add_argument("--out", default=str(OUT), help="folder of quality.{json,md,png}")
    p.add_argument("--runs-dir", default="runs/bench")
    args = p.parse_args()
    out = Path(args.out)
    quiet_third_party()
    rows: List[Dict[str, Any]] = []
    start = time.time()

    def sweep(common: List[str], kinds: List[str], ratios: List[int], name: str, extra: List[str] = ()) -> List[Dict[str, Any]]:
        grid = "sweep={embedding.kind: [" + ",".join(kinds) + "], compression.ratio: [" + ",".join(map(str, ratios)) + "]}"
        return run_sweep(load_config(None, [*common, f"name={name}", grid, *extra]))

    for seed in args.seeds:
        overrides = [
            f"name=quality/seed{seed}", f"runs_dir={args.runs_dir}", f"data.path={args.data}",
            "data.synthesize_if_missing=true", f"synth.rows_train={args.rows}", f"synth.rows_eval={args.rows // 5}",
            "synth.row_group_size=65536", "data.batch_size=1024", f"trainer.epochs={args.epochs}",
            f"trainer.seed={seed}", "trainer.launcher=local", "cluster.num_workers=1", "trainer.progress_bar=false",
            "trainer.tensorboard=false",
            "sweep={embedding.kind: [" + ",".join(m for m in args.methods if m != "full") + "], compression.ratio: ["
            + ",".join(map(str, args.ratios)) + "]}",
        ]
        cfg = load_config(None, overrides)
        rows += run_sweep(cfg)
        full = load_config(None, [o for o in overrides if not o.startswith("sweep=")] + ["sweep={embedding.kind: [full]}"])
        rows += run_sweep(full)
        common = [o for o in overrides if not o.startswith(("sweep=", "name="))]
        extra_robe = [r for r in args.robe_ratios if r not in args.ratios]
        if "robe" in args.methods and extra_robe:
            rows += sweep(common, ["robe"], extra_robe, f"quality/seed{seed}/robe")
    if args.fp16_best and args.fp16_ratios:
        best = best_methods(summarize(rows), args.fp16_ratios[0], args.fp16_best)
        print(f"fp16 variants of {best} (best mean AUC at {args.fp16_ratios[0]}x, fp32)", flush=True)
        for seed in args.seeds:
            common = [o for o in overrides if not o.startswith(("sweep=", "name=", "trainer.seed="))] + [f"trainer.seed={seed}"]
            rows += [dict(r, precision="fp16") for r in
                     sweep(common, best, args.fp16_ratios, f"quality/seed{seed}/fp16", ["embedding.precision=fp16"])]
    summary = summarize(rows)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "quality.json", {"args": vars(args), "runs": rows, "summary": summary,
                                             "seconds": time.time() - start})
    md = markdown(summary)
    atomic_write_text(out / "quality.md", md + "\n")
    plot(summary, out / "quality.png")
    print(md)
    print(f"\n{len(rows)} runs in {time.time() - start:.0f} s; results in {out}/quality.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
