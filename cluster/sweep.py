"""Config-driven scaling runs: a config's ``sweep`` grid -> one run per point -> one table.

    sweep:
      embedding.kind: [full, memcom, cafe]
      compression.ratio: [16, 256]
      cluster.num_workers: [1, 2]

Each point is the config with those dotted keys set, named ``<name>/<key>=<value>...``. First,
in the driver, every point's embedding module is planned on the meta device: a point whose
ratio its method cannot reach is rejected there, before any worker starts, and listed in
the results as unreachable. The other points run as Ray Tune trials, each one a Ray Train
run, as many at once as the cluster holds (``tune_sweep.py``); with
``trainer.launcher=local`` one after another without Ray; with ``--address`` each is
submitted to a cluster as a job and followed to its end.

One launch id (``trainer/run_folder.py``) serves the whole sweep: the table goes to
``runs/<name>/<launch>/results.{csv,md,png}`` (``runs/<name>/latest`` points there) and each
point to ``runs/<name>/<key>=<value>.../<launch>/``. The command exits 0 when every
reachable point finished.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
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


def _submit_point(run: RunConfig, address: str, remote_dir: Optional[str]) -> Dict[str, Any]:
    """Run one point as a job on the cluster at ``address``; its metrics (shared runs_dir)."""
    from compactrec.cluster.submit import DEFAULT_REMOTE_DIR, cluster_run_config, follow_job, job_spec, stage_code, submit_job
    from compactrec.trainer.run_folder import run_dir
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
    metrics = run_dir(shipped) / "metrics.json"
    if not metrics.exists():
        raise RuntimeError(f"job {job} succeeded but {metrics} is not visible here (runs_dir not shared?)")
    return json.loads(metrics.read_text())


def _schema(cfg: RunConfig) -> Optional[Any]:
    """The data's feature schema when its manifest is readable from here (with ``--address``
    the data may live only on the cluster: then the points are not checked up front)."""
    from compactrec.data.reader.manifest import read_manifest

    try:
        return read_manifest(cfg.data.path).schema
    except (FileNotFoundError, ValueError, OSError):
        return None


def _base_row(name: str, point: Point, run: RunConfig) -> Dict[str, Any]:
    asked = 1 if run.embedding.kind == "full" else run.compression.ratio or 1  # full ignores it
    return {"run": name, "name": name, **point, "ratio_requested": asked, "embedding_kind": run.embedding.kind}


def run_sweep(cfg: RunConfig, address: Optional[str] = None, remote_dir: Optional[str] = None) -> List[Dict[str, Any]]:
    """Run (or submit) every reachable point; one row per point: its metrics and
    ``status`` done, or ``status`` unreachable / failed with ``error``."""
    from compactrec.cluster.run import absolute_paths, ensure_data
    from compactrec.run_log import RunLog
    from compactrec.trainer.run_folder import new_launch_id, point_latest

    if not cfg.sweep:
        raise ConfigError("the config declares no `sweep`; run it with `compactrec train`")
    if not address:
        cfg = absolute_paths(cfg)
        ensure_data(cfg)  # once, before the points
    launch = new_launch_id()
    sweep_dir = Path(cfg.runs_dir) / cfg.name / launch
    sweep_dir.mkdir(parents=True, exist_ok=True)
    point_latest(sweep_dir.parent, launch)
    with RunLog(sweep_dir / "log.txt"):
        print(f"compactrec sweep: {cfg.name}: launch {launch} in {sweep_dir}", flush=True)
        rows = _sweep(cfg, launch, sweep_dir, address, remote_dir)
    for row in rows:
        row["sweep_dir"] = str(sweep_dir)
    write_results(rows, sweep_dir)
    return rows


def _sweep(cfg: RunConfig, launch: str, sweep_dir: Path, address: Optional[str], remote_dir: Optional[str]) -> List[Dict[str, Any]]:
    """Plan every point (unreachable ones become rows at once), then run the rest."""
    from compactrec.cluster.reachable import unreachable_reason

    schema = _schema(cfg)
    rows: List[Dict[str, Any]] = []
    todo: List[Tuple[int, RunConfig]] = []
    for name, point in sweep_points(cfg):
        run = point_config(cfg, name, point)
        run = replace(run, trainer=replace(run.trainer, run_id=launch))
        row = _base_row(name, point, run)
        why = unreachable_reason(run, schema) if schema is not None else None
        if why is not None:
            row.update(status="unreachable", error=why)
            print(f"compactrec sweep: {name}: not run, {why}", flush=True)
        else:
            todo.append((len(rows), run))
        rows.append(row)
    for i, outcome in _run_points(cfg, todo, sweep_dir, address, remote_dir).items():
        if isinstance(outcome, dict):
            rows[i].update({k: v for k, v in outcome.items() if k != "config"}, status="done")
        else:
            rows[i].update(status="failed", error=outcome)
            print(f"compactrec sweep: {rows[i]['name']}: failed: {outcome}", flush=True)
    return rows


def _run_points(
    cfg: RunConfig, todo: List[Tuple[int, RunConfig]], sweep_dir: Path, address: Optional[str], remote_dir: Optional[str]
) -> Dict[int, Any]:
    """Row index -> the point's metrics, or its error text."""
    out: Dict[int, Any] = {}
    if not todo:
        return out
    if address or cfg.trainer.launcher == "local":
        from compactrec.cluster.run import run_training

        for i, run in todo:
            try:
                out[i] = _submit_point(run, address, remote_dir) if address else run_training(run)
            except (ValueError, RuntimeError) as e:  # BudgetError and worker failures included
                out[i] = str(e).strip().splitlines()[-1]
        return out
    from compactrec.cluster.ray_launcher import ray_session
    from compactrec.cluster.tune_sweep import run_on_tune
    from compactrec.trainer.run_folder import run_dir

    largest = max((run for _, run in todo), key=lambda r: r.cluster.num_workers * r.cluster.cpus_per_worker)
    with ray_session(largest, extra_cpus=1):  # a local cluster: the largest point + the trial drivers
        errors = run_on_tune([run for _, run in todo], sweep_dir)
    for k, (i, run) in enumerate(todo):
        metrics = run_dir(run) / "metrics.json"
        out[i] = errors.get(k) or (json.loads(metrics.read_text()) if metrics.exists() else f"no {metrics}")
    return out


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

    ok = [r for r in rows if r.get("status", "done") == "done" and "auc" in r]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for kind in sorted({r["embedding_kind"] for r in ok}):
        pts = sorted((r["compression_ratio"], r["auc"]) for r in ok if r["embedding_kind"] == kind)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=kind)
    bayes = [r["bayes_auc"] for r in ok if r.get("bayes_auc")]
    if bayes:
        ax1.axhline(max(bayes), color="gray", linestyle="--", label="Bayes AUC")
    ax1.set(xscale="log", xlabel="compression ratio (built)", ylabel="eval AUC", title="AUC vs compression")
    if ax1.get_legend_handles_labels()[0]:
        ax1.legend(fontsize=8)
    names = [r["run"].split("/", 1)[-1] for r in ok]
    ax2.barh(range(len(ok)), [r.get("samples_per_s", 0) for r in ok])
    ax2.set_yticks(range(len(ok)), names, fontsize=7)
    ax2.set(xlabel="training samples/s", title="throughput")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


DESCRIPTION = """\
Run every point of a config's sweep grid and collect one table. Each point's embedding
module is planned first: a point whose ratio its method cannot reach is listed as
unreachable and never started. The others run as Ray Tune trials, each one a Ray Train run,
as many at once as the cluster holds (one after another without Ray, with
trainer.launcher=local). Exit status 0 when every reachable point finished.

example (in the YAML, or as an override):
  sweep: {embedding.kind: [full, memcom, cafe], compression.ratio: [16, 64]}

results: runs/NAME/latest/results.{csv,md,png}; point runs: runs/NAME/KEY=VALUE,.../LAUNCH/
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("sweep", help="run every point of a config's sweep grid, collect one table",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides (applied before the grid)")
    p.add_argument("--address", default=None, help="submit each point to this Ray cluster (Jobs API) instead")
    p.add_argument("--remote-dir", default=None, help="with --address: the cluster's folder for relative paths")
    p.set_defaults(fn=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from compactrec.run_log import append_log

    cfg = load_config(args.config, args.overrides)
    rows = run_sweep(cfg, args.address, args.remote_dir)
    where = Path(rows[0]["sweep_dir"]) if rows else Path(cfg.runs_dir) / cfg.name / "latest"
    lines = [results_markdown(rows), f"compactrec sweep: results in {where}/results.{{csv,md,png}}"]
    unreachable = [r["name"] for r in rows if r.get("status") == "unreachable"]
    if unreachable:
        lines.append(f"compactrec sweep: {len(unreachable)} point(s) unreachable, not run: {', '.join(unreachable)}")
    print("\n".join(lines))
    append_log(where / "log.txt", "\n".join(lines))
    return 0 if all(r.get("status") != "failed" for r in rows) else 1
