"""The driver's one line for a failed Ray run names each failed rank, its node and the step."""

from __future__ import annotations

from ray.train import WorkerGroupError

from compactrec.cluster.fault_message import describe_failure

DEAD = """A worker health check failed.
Worker info: Worker(
  metadata=ActorMetadata(hostname='node-7', node_id='d69d', node_ip='10.0.0.7', pid=30591),
)
The actor died unexpectedly before finishing this task.
The actor is dead because its worker process has died. Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2. End of file. Some common causes include: ..."""
RAISED = """Traceback (most recent call last):
  File "trainer/loop.py", line 290, in train
RuntimeError: gloo: Connection reset by peer

The above exception was the direct cause of the following exception:

RuntimeError: rank 0 on node node-3 (pid 30590) after step 6 (epoch 1): RuntimeError: gloo: Connection reset by peer"""


def test_dead_rank_first_with_node_pid_and_its_peers_step():
    e = WorkerGroupError("Training failed due to worker errors", {0: RuntimeError(RAISED), 1: RuntimeError(DEAD)})
    msg = describe_failure(e)
    assert msg.startswith(
        "rank 1 on node node-7 (10.0.0.7, pid 30591) died after step 6 (the step its peers reached): "
        "Worker exit type: SYSTEM_ERROR Worker exit detail: Worker unexpectedly exits with a connection error code 2."
    )
    assert msg.endswith("; rank 0 on node node-3 (pid 30590) after step 6 (epoch 1): RuntimeError: gloo: Connection reset by peer")


def test_other_errors_keep_their_last_line():
    assert describe_failure(ValueError("first\nthe real reason")) == "the real reason"
