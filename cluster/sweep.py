"""Config-driven scaling runs: a config's ``sweep`` grid -> one run per point -> one table.

    sweep:
      embedding.kind: [full, memcom, cafe]
      compression.ratio: [16, 256]
      cluster.num_workers: [1, 2]

Each point is the config with those dotted keys set, named ``<name>/<key>=<value>...``; the
points run one after another in one Ray session (or are submitted to a cluster with
``--address``, each followed to its end). A point that cannot run (e.g. a ratio a method
cannot reach) is a row with its error, not the end of the sweep. Every point's
``metrics.json`` is collected into ``runs/<name>/results.{csv,md,png}``.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from compactrec.trainer.config import ConfigError, RunConfig, load_config, with_overrides
from compactrec.io import atomic_write, atomic_write_text
from compactrec.trainer.summary import summary_table

Point = Dict[str, Any]
def _label(key: str, value: Any) -> str:
    return f"{key.split('.')[-1]}={value}"


def sweep_points(cfg: RunConfig) -> List[Tuple[str, Point]]:
    """(run name, overrides) per point of the grid, in the order the YAML lists them."""
    keys = list(cfg.sweep)
    out = []
    for values in itertools.product(*(cfg.sweep[k] for k in keys)):
        point = dict(zip(keys, values))
        out.append((f"{cfg.name}/" + ",".join(_label(k, v) for k, v in point.items()), point))
    return out


def point_config(cfg: RunConfig, name: str, point: Point) -> RunConfig:
    run = with_overrides(replace(cfg, sweep={}), point)
    return replace(run, name=name)


def _run_point(run: RunConfig, address: Optional[str], remote_dir: Optional[str]) -> Dict[str, Any]:
    if not address:
        from compactrec.cluster.run import run_training

        return run_training(run)
    from compactrec.cluster.submit import DEFAULT_REMOTE_DIR, cluster_run_config, follow_job, job_spec, stage_code, submit_job
    import tempfile
    import uuid

    shipped = cluster_run_config(run, remote_dir or DEFAULT_REMOTE_DIR)
    with tempfile.TemporaryDirectory(prefix="compactrec-sweep-") as tmp:
        entrypoint, env = job_spec(shipped, stage_code(Path(tmp)))
        job = submit_job(address, entrypoint, env, f"compactrec-sweep-{uuid.uuid4().hex[:8]}", {"run": run.name})
    print(f"compactrec sweep: {run.name}: job {job}", flush=True)
    status = follow_job(address, job)
    if status != "SUCCEEDED":
        raise RuntimeError(f"job {job} ended {status}")
    metrics = Path(shipped.runs_dir) / run.name / "metrics.json"
    if not metrics.exists():
        raise RuntimeError(f"job {job} succeeded but {metrics} is not visible here (runs_dir not shared?)")
    return json.loads(metrics.read_text())


def run_sweep(cfg: RunConfig, address: Optional[str] = None, remote_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run (or submit) every point; returns one row per point (metrics, or its error)."""
    from compactrec.cluster.run import absolute_paths, ensure_data

    if not cfg.sweep:
        raise ConfigError("the config declares no `sweep`; run it with `compactrec train`")
    if not address:
        cfg = absolute_paths(cfg)
        ensure_data(cfg)  # once, before the points
    session = nullcontext()
    if not address and cfg.trainer.launcher == "ray":
        from compactrec.cluster.ray_launcher import ray_session

        session = ray_session(cfg)
    rows: List[Dict[str, Any]] = []
    with session:
        for name, point in sweep_points(cfg):
            run = point_config(cfg, name, point)
            asked = 1 if run.embedding.kind == "full" else run.compression.ratio or 1  # full ignores it
            row: Dict[str, Any] = {"run": name, "name": name, **point, "ratio_requested": asked,
                                   "embedding_kind": run.embedding.kind}
            try:
                row.update({k: v for k, v in _run_point(run, address, remote_dir).items() if k != "config"})
            except (ValueError, RuntimeError) as e:  # BudgetError and worker failures included
                row["error"] = str(e).strip().splitlines()[-1]
                print(f"compactrec sweep: {name}: {row['error']}", flush=True)
            rows.append(row)
    write_results(rows, Path(cfg.runs_dir) / cfg.name)
    return rows


def results_markdown(rows: Sequence[Dict[str, Any]]) -> str:
    return summary_table(rows)


def write_results(rows: Sequence[Dict[str, Any]], out: Path) -> None:
    """``results.csv``, ``results.md`` and ``results.png`` (AUC vs built ratio per method)."""
    keys: List[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "results.md", results_markdown(rows) + "\n")
    plot_results(rows, out / "results.png")


def plot_results(rows: Sequence[Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r and "auc" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({r["embedding_kind"] for r in ok}):
        pts = sorted((r["compression_ratio"], r["auc"]) for r in ok if r["embedding_kind"] == kind)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
    bayes = [r["bayes_auc"] for r in ok if r.get("bayes_auc")]
    if bayes:
        ax1.axhline(max(bayes), color="gray", linestyle="--", label="Bayes AUC")
    ax1.set(xscale="log", xlabel="compression ratio (built)", ylabel="eval AUC", title="AUC vs compression")
    ax1.legend(fontsize=8)
    names = [r["run"].split("/", 1)[-1] for r in ok]
    ax2.barh(range(len(ok)), [r.get("samples_per_s", 0) for r in ok])
    ax2.set_yticks(range(len(ok)), names, fontsize=7)
    ax2.set(xlabel="training samples/s", title="throughput")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("sweep", help="run every point of a config's `sweep` grid, collect one table")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (applied before the grid)")
    p.add_argument("--address", default=None, help="submit each point to this Ray cluster (Jobs API) instead")
    p.add_argument("--remote-dir", default=None, help="with --address: the cluster's folder for relative paths")
    p.set_defaults(fn=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    rows = run_sweep(cfg, args.address, args.remote_dir)
    print(results_markdown(rows))
    print(f"compactrec sweep: results in {Path(cfg.runs_dir) / cfg.name}/results.{{csv,md,png}}")
    return 0 if all("error" not in r for r in rows) else 1
