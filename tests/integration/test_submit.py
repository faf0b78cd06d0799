"""``compactrec submit`` against a real Ray cluster started here: a head on loopback whose
Python has torch, torchrec and Ray but cannot import CompactRec, so the demo can only run
from the code the job ships (and the job's log says which copy it imported)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import psutil
import pytest

from compactrec.cluster.submit import stage_code

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "methods" / "full.yaml"  # the demo's full-table point
# The CLI as compactrec/cli.py registers it (add_parser + args.fn), in a fresh process.
CLI = (
    "import argparse, sys; from compactrec.cluster.submit import add_parser; "
    "p = argparse.ArgumentParser(prog='compactrec'); add_parser(p.add_subparsers(dest='command', required=True)); "
    "a = p.parse_args(); sys.exit(a.fn(a))"
)
TINY = [
    "name=submit1",
    "data.synthesize_if_missing=true", "synth.rows_train=4096", "synth.rows_eval=1024", "synth.scale=1e-4",
    "synth.shards_train=2", "synth.shards_eval=1", "synth.row_group_size=512", "synth.min_cardinality=8",
    "trainer.launcher=ray", "cluster.num_workers=1", "trainer.progress_bar=false", "trainer.tensorboard=false",
    "data.batch_size=128", "data.eval_batch_size=512",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "PYTHONPATH")}
    env.update(RAY_AUTH_MODE="disabled", OMP_NUM_THREADS="1", **extra)
    return env


def _cluster_python(root: Path) -> Path:
    """A Python that sees this environment's packages but not CompactRec: a bare venv whose
    .pth lists our site-packages. Python does not run the .pth files of a directory named in a
    .pth, so the editable install's import hook (itself a .pth) is never installed."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(root), "platbase": str(root)}))
    (site / "cluster_packages.pth").write_text(sysconfig.get_path("purelib") + "\n")
    return root / "bin" / "python"


@contextmanager
def ray_head(python: Path, workdir: Path, temp: Optional[Path] = None, num_cpus: int = 4,
             gcs_port: int = 0, node_ip: str = "") -> Iterator[Tuple[str, Path]]:
    """``ray start --head --block`` on loopback with free ports (the GCS on ``gcs_port`` if
    given, the node named ``node_ip`` if given) and ``num_cpus`` CPUs; yields (dashboard URL,
    Ray's temp dir, default a new one). Stops every process it started, by id (``ray stop`` would
    stop every Ray cluster on the machine, other people's included)."""
    temp = temp or Path(tempfile.mkdtemp(prefix="cr-ray-", dir="/tmp"))  # Ray's socket paths must stay short
    dashboard = _free_port()
    ports = {
        "--port": gcs_port or _free_port(), "--dashboard-port": dashboard, "--ray-client-server-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port(),
    }
    # The dashboard, the one port the test talks to, listens on loopback only. (Ray 2.60 names
    # the node by the machine's address even when given --node-ip-address=127.0.0.1.)
    cmd = [str(python), "-m", "ray.scripts.scripts", "start", "--head", "--block", "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}", "--num-gpus=0",
           "--disable-usage-stats", f"--temp-dir={temp}", *(f"{k}={v}" for k, v in ports.items()),
           *([f"--node-ip-address={node_ip}"] if node_ip else [])]
    env = _env(PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")  # `python` in jobs = this one
    log = open(workdir / "ray-head.log", "w")
    head = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        _wait_for_jobs_api(address, head, workdir / "ray-head.log")
        yield address, temp
    finally:
        _stop_tree(head)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


def _wait_for_jobs_api(address: str, head: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + timeout_s
    while True:
        if head.poll() is not None:
            pytest.fail(f"ray start exited with {head.returncode}:\n{log.read_text()[-3000:]}")
        try:
            JobSubmissionClient(address).list_jobs()
            return
        except Exception:
            if time.monotonic() > deadline:
                pytest.fail(f"the Ray Jobs API at {address} did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(1)


def _stop_tree(head: subprocess.Popen) -> None:
    """SIGTERM to ``ray start --block`` (it stops the node's processes), then SIGKILL to any
    process it started (descendant or member of its session) still alive."""
    try:
        ours = {head.pid: psutil.Process(head.pid), **{p.pid: p for p in psutil.Process(head.pid).children(recursive=True)}}
    except psutil.NoSuchProcess:
        ours = {}
    for p in psutil.process_iter():
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == head.pid:
                ours[p.pid] = p
        except (OSError, psutil.Error):
            continue
    head.send_signal(signal.SIGTERM)
    try:
        head.wait(timeout=5)  # a node with live workers drains up to 30 s first: not worth waiting for
    except subprocess.TimeoutExpired:
        pass
    for p in ours.values():
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(list(ours.values()), timeout=10)


def test_shipped_code_comes_before_an_installed_copy(tmp_path: Path):
    """On a cluster that has CompactRec installed (editable here), the job's PYTHONPATH entry
    from py_modules still wins, for the package and its mapped folders alike."""
    code = stage_code(tmp_path / "stage")
    probe = "import compactrec, compactrec.trainer.config as c, compactrec.cluster.kuberay as k; print(compactrec.__file__, c.__file__, k.__file__)"
    shipped = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(PYTHONPATH=str(code.parent)),
                             capture_output=True, text=True, check=True)
    assert all(Path(f).is_relative_to(code) for f in shipped.stdout.split()), shipped.stdout
    installed = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=_env(), capture_output=True, text=True, check=True)
    assert not any(Path(f).is_relative_to(code) for f in installed.stdout.split())  # the control


def test_unreachable_cluster_is_a_clear_error(tmp_path: Path, monkeypatch):
    import argparse

    from compactrec.cluster.submit import add_parser

    monkeypatch.chdir(tmp_path)
    p = argparse.ArgumentParser(prog="compactrec")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["submit", str(DEMO), "--address", f"http://127.0.0.1:{_free_port()}"])
    with pytest.raises(RuntimeError, match="cannot reach the Ray dashboard at http://127.0.0.1:"):
        args.fn(args)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(300)
def test_submit_runs_the_demo_from_the_shipped_code(tmp_path: Path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    python = _cluster_python(tmp_path / "cluster-env")
    probe = subprocess.run([str(python), "-c", "import torchrec, ray, compactrec"], cwd=tmp_path, env=_env(),
                           capture_output=True, text=True)
    assert "No module named 'compactrec'" in probe.stderr, probe.stderr  # the cluster lacks CompactRec
    remote = tmp_path / "remote"
    with ray_head(python, tmp_path) as (address, ray_temp):
        r = subprocess.run([sys.executable, "-c", CLI, "submit", str(DEMO), "--address", address, "--follow",
                            "--remote-dir", str(remote), *TINY],
                           cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
        log = f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-3000:]}"
        assert r.returncode == 0, log
        job_id = re.search(r"^submitted job (\S+) to ", r.stdout, re.M).group(1)
        assert job_id.startswith("compactrec-submit1-") and f"job {job_id}: SUCCEEDED" in r.stdout, log
        info = JobSubmissionClient(address).get_job_info(job_id)
        assert info.status == JobStatus.SUCCEEDED
        assert [u.startswith("gcs://_ray_pkg_") for u in info.runtime_env["py_modules"]] == [True]
        code = Path(re.search(r"^compactrec: code from (\S+)", r.stdout, re.M).group(1))
        assert code.is_relative_to(ray_temp) and "runtime_resources/py_modules_files" in str(code), code
        assert "Bayes AUC" in r.stdout and "submit1" in r.stdout  # the job's summary table, streamed
    metrics = json.loads((remote / "runs" / "submit1" / "latest" / "metrics.json").read_text())
    assert metrics["world_size"] == 1 and metrics["steps"] == 4096 // 128
    assert (remote / "datasets" / "demo" / "_manifest.json").exists()  # relative data.path -> --remote-dir


def test_an_explicit_address_wins_over_ray_address(monkeypatch):
    """Ray's Jobs SDK lets RAY_ADDRESS override the address it is given; ours does not."""
    import ray.dashboard.utils as ray_utils

    from compactrec.cluster.submit import _client

    seen = []
    monkeypatch.setenv("RAY_ADDRESS", "local")
    monkeypatch.setattr(ray_utils, "ray_address_to_api_server_url", lambda a: seen.append(a) or pytest.fail(f"looked up {a}"))
    with pytest.raises(ConnectionError, match=r"http://127\.0\.0\.1:9\b"):  # nothing listens there
        _client("http://127.0.0.1:9")
    assert seen == [] and "RAY_API_SERVER_ADDRESS" not in os.environ
