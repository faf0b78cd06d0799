"""Quality of every method at 4x, 16x, 64x and 256x on the synthetic planted data.

    python benchmarks/quality.py [--rows 1000000] [--epochs 1] [--seeds 0 1 2]

Data: synthetic Criteo-shaped shards (``data/datasets/synthetic.py``) whose labels come from a
planted teacher, so the Bayes AUC (the teacher's own AUC) is known. Each method is trained
with the same model, optimizer and data (local launcher, 1 worker, 1 thread); a ratio a
method cannot reach is recorded as such (its planner says its maximum). Output: the AUC,
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
        by.setdefault((kind, ratio), []).append(r)
    return by


def summarize(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean (and spread over seeds) per (method, ratio), with the gaps to full and Bayes."""
    out = []
    by = _points(rows)
    full_auc = statistics.mean(r["auc"] for r in by[("full", 1)])
    for (kind, ratio), rs in by.items():
        ok = [r for r in rs if "error" not in r]
        row: Dict[str, Any] = {"method": kind, "ratio": ratio, "seeds": len(rs)}
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
    return sorted(out, key=lambda r: (METHODS.index(r["method"]), r["ratio"]))


def markdown(summary: List[Dict[str, Any]]) -> str:
    lines = [
        "| method | ratio asked | ratio built | AUC | ± (seeds) | logloss | AUC - full | AUC - Bayes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary:
        if "note" in r:
            lines.append(f"| {r['method']} | {r['ratio']}x | - | unreachable: {r['note'].split(': ', 1)[-1]} | | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['ratio']}x | {r['built_ratio']:.1f}x | {r['auc']:.4f} | "
            f"{r['auc_std']:.4f} ({r['seeds']}) | {r['logloss']:.4f} | {r['gap_full']:+.4f} | {r['gap_bayes']:+.4f} |"
        )
    return "\n".join(lines)


def plot(summary: List[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    ok = [r for r in summary if "auc" in r]
    for kind in METHODS:
        pts = sorted((r["built_ratio"], r["auc"], r["auc_std"]) for r in ok if r["method"] == kind)
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=kind)
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
    p.add_argument("--data", default="datasets/bench_quality")
    args = p.parse_args()
    quiet_third_party()
    rows: List[Dict[str, Any]] = []
    start = time.time()
    for seed in args.seeds:
        overrides = [
            f"name=quality/seed{seed}", "runs_dir=runs/bench", f"data.path={args.data}",
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
    summary = summarize(rows)
    OUT.mkdir(exist_ok=True)
    atomic_write_json(OUT / "quality.json", {"args": vars(args), "runs": rows, "summary": summary,
                                             "seconds": time.time() - start})
    md = markdown(summary)
    atomic_write_text(OUT / "quality.md", md + "\n")
    plot(summary, OUT / "quality.png")
    print(md)
    print(f"\n{len(rows)} runs in {time.time() - start:.0f} s; results in {OUT}/quality.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
