"""``compactrec train`` the way Ray users run it, against a real ``ray start --head`` started
here: as the entrypoint of ``ray job submit`` (RAY_ADDRESS set by the job supervisor), it
attaches to the head and passes no resources to ``ray.init`` (which Ray refuses when
attaching); ``cluster.address=local`` starts a cluster of its own instead. As a plain command
on a machine where the head is running (its address recorded in the Ray temp dir), it
attaches too: tests/integration/test_two_nodes.py, the resumed run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.integration.test_submit import ray_head

REPO = Path(__file__).resolve().parents[2]
CLI = str(Path(sys.executable).parent / "compactrec")
TINY = ["cluster.num_workers=1", "trainer.progress_bar=false", "trainer.tensorboard=false",
        "data.batch_size=128", "data.eval_batch_size=512", "trainer.max_steps=8"]


def test_address_resolution(monkeypatch):
    from compactrec.cluster import ray_address

    monkeypatch.setattr(ray_address, "running_head", lambda: "10.0.0.9:6379")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_address.cluster_address("") == "10.0.0.9:6379"  # a running head wins over a new cluster
    assert ray_address.cluster_address("local") is None
    assert ray_address.cluster_address("ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "192.0.2.1:6379")  # inside `ray job submit`
    assert ray_address.cluster_address("") == "192.0.2.1:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert ray_address.cluster_address("") is None
    monkeypatch.setattr(ray_address, "running_head", lambda: None)
    monkeypatch.delenv("RAY_ADDRESS")
    assert ray_address.cluster_address("") is None  # nothing there: start one


def test_a_recorded_head_that_died_is_not_attached(tmp_path: Path, monkeypatch):
    from compactrec.cluster.ray_address import running_head

    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # left behind by a killed head
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert running_head() is None


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.timeout(600)
def test_train_attaches_inside_ray_job_submit(tiny_data: Path, tmp_path: Path):
    from ray.job_submission import JobStatus, JobSubmissionClient

    runs = tmp_path / "runs"
    args = ["train", str(REPO / "configs" / "methods" / "full.yaml"), f"data.path={tiny_data}", f"runs_dir={runs}", *TINY]
    with ray_head(Path(sys.executable), tmp_path) as (address, _):
        client = JobSubmissionClient(address)
        job = client.submit_job(entrypoint=" ".join([CLI, *args, "name=injob"]))  # `ray job submit -- compactrec train ...`
        status = _wait(client, job)
        log = client.get_job_logs(job)
        assert status == JobStatus.SUCCEEDED, log[-4000:]
        assert "compactrec: attaching to the Ray cluster at" in log, log[-4000:]
        assert "num_cpus and num_gpus must not be provided" not in log
    m = json.loads((runs / "injob" / "latest" / "metrics.json").read_text())
    assert m["world_size"] == 1 and m["steps"] == 8


def _wait(client, job: str, timeout_s: float = 400) -> str:
    import time

    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = client.get_job_status(job)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return status
        time.sleep(1)
    return client.get_job_status(job)
