"""Two Ray nodes on this machine, for real: ``ray start --head`` and a second ``ray start
--address=...`` with its own CPUs, ports and temp dir. ``compactrec train`` attaches with
``cluster.address`` and trains 2 nodes x 2 workers (world size 4, 2 ranks per node), saves,
and the run resumes on the head alone with 2 workers (the tables resharded 4 -> 2 ranks,
CAFE's hot ids re-homed), as a plain ``compactrec train`` without an address, which must
find the head that ``ray start`` recorded on this machine. Only the processes these tests
started are stopped."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest

from tests.integration.test_submit import _env, _free_port, _stop_tree, ray_head

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "compactrec")
RUN = ["trainer.launcher=ray", "cluster.cpus_per_worker=1", "trainer.progress_bar=false", "trainer.tensorboard=false",
       "data.batch_size=128", "data.eval_batch_size=512", "trainer.max_steps=8", "trainer.checkpoint_every=4",
       # the resume test's CAFE setup: row-wise hot table with room to re-home (test_fault_tolerance)
       "embedding.cafe.threshold=3", "embedding.cafe.importance=count", "compression.ratio=4"]


@contextmanager
def ray_node(gcs: str, workdir: Path, num_cpus: int, node_ip: str) -> Iterator[subprocess.Popen]:
    """``ray start --address=GCS --block``: a second node of ``num_cpus`` CPUs with ports, a
    temp dir and an address of its own (``node_ip``, another loopback address: Ray Train
    groups ranks into hosts by node address, so the two nodes count as two hosts); stopped
    (its process tree only) on exit."""
    temp = Path(tempfile.mkdtemp(prefix="cr-node-", dir="/tmp"))
    ports = {
        "--node-manager-port": _free_port(), "--object-manager-port": _free_port(),
        "--dashboard-agent-listen-port": _free_port(), "--dashboard-agent-grpc-port": _free_port(),
        "--metrics-export-port": _free_port(), "--runtime-env-agent-port": _free_port(),
    }
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", f"--address={gcs}", "--block", f"--num-cpus={num_cpus}",
           "--num-gpus=0", "--disable-usage-stats", f"--temp-dir={temp}", f"--node-ip-address={node_ip}", *(f"{k}={v}" for k, v in ports.items())]
    log = open(workdir / "ray-node2.log", "w")
    node = subprocess.Popen(cmd, cwd=workdir, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield node
    finally:
        _stop_tree(node)
        log.close()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def _alive_nodes(gcs: str) -> int:
    """Alive nodes of the cluster at ``gcs``, asked from a fresh driver process."""
    code = f"import ray; ray.init(address='{gcs}', logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    r = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    return int(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 and r.stdout.strip() else 0


def _wait_nodes(gcs: str, n: int, node: subprocess.Popen, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while _alive_nodes(gcs) != n:
        if node.poll() is not None:
            pytest.fail(f"the second ray start exited with {node.returncode}:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"the cluster at {gcs} did not reach {n} alive nodes:\n{log.read_text()[-3000:]}")
        time.sleep(2)


def _train(gcs: str, workdir: Path, *args: str, ray_tmpdir: Optional[Path] = None) -> str:
    """``compactrec train`` with ``cluster.address=GCS``, or with no address and RAY_TMPDIR
    set (``ray_tmpdir``): a plain command on the head's machine, which must find the head
    that ``ray start`` recorded there (README, "Ray")."""
    where = [] if ray_tmpdir else [f"cluster.address={gcs}"]
    cmd = [CLI, "train", str(REPO / "configs" / "methods" / "cafe.yaml"), *where, *RUN, *args]
    env = _env(RAY_TMPDIR=str(ray_tmpdir)) if ray_tmpdir else _env()
    r = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    port = gcs.rsplit(":", 1)[1]  # a recorded head may be named by the machine's address
    assert re.search(rf"compactrec: attaching to the Ray cluster at \S+:{port}\b", out), out[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(900)
def test_two_nodes_of_two_workers_train_save_and_resume_on_one_node(tiny_data: Path, tmp_path: Path):
    runs = tmp_path / "runs"
    common = [f"data.path={tiny_data}", f"runs_dir={runs}"]
    port = _free_port()
    gcs = f"127.0.0.1:{port}"  # the head's GCS
    root = Path(tempfile.mkdtemp(prefix="cr-2n-", dir="/tmp"))  # RAY_TMPDIR: Ray's temp dir is ROOT/ray
    try:
        with ray_head(Path(sys.executable), tmp_path, temp=root / "ray", num_cpus=2, gcs_port=port,
                      node_ip="127.0.0.1") as (_, temp):
            with ray_node(gcs, tmp_path, num_cpus=2, node_ip="127.0.0.2") as node:
                _wait_nodes(gcs, 2, node, tmp_path / "ray-node2.log")
                # 4 workers of 1 CPU on two 2-CPU nodes: Ray Train must place 2 on each
                _train(gcs, tmp_path, *common, "name=wide", "cluster.num_workers=4")
            _wait_nodes(gcs, 1, node, tmp_path / "ray-node2.log")  # the second node is gone
            saved = runs / "wide" / "latest" / "checkpoints"
            # a plain `compactrec train` beside the head: no address, it finds the recorded head
            _train(gcs, tmp_path, *common, "name=narrow", "cluster.num_workers=2", f"trainer.resume_from={saved}",
                   ray_tmpdir=root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    wide = json.loads((runs / "wide" / "latest" / "metrics.json").read_text())
    narrow = json.loads((runs / "narrow" / "latest" / "metrics.json").read_text())
    assert (wide["world_size"], wide["local_world_size"], wide["nodes"]) == (4, 2, 2), wide
    assert (narrow["world_size"], narrow["local_world_size"], narrow["nodes"]) == (2, 2, 1), narrow
    assert sorted(p.name for p in saved.iterdir() if p.name.startswith("step_")) == ["step_000000004", "step_000000008"]
    assert narrow["resumed_from"] and narrow["steps"] == wide["steps"] == 8
    # eval right after the load on the 2-rank plan: the model the 4 ranks saved (row-wise
    # partial sums may differ in the last float bit), CAFE's hot ids all re-homed
    for key in ("auc", "logloss", "ne"):
        assert narrow[key] == pytest.approx(wide[key], rel=1e-6, abs=1e-7), key
    assert wide["cafe_hot_ids"] > 0 and narrow["cafe_hot_digest"] == wide["cafe_hot_digest"]
    assert not os.path.exists(temp), "the head's temp dir is left behind"
