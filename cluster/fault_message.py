"""One line for a failed Ray Train run: which rank died, on which node, after which step.

Ray Train's ``WorkerGroupError`` maps each failed rank to its error. A rank whose process
died (killed, OOM, ``os._exit``) has only Ray's health-check text (hostname, node IP, pid);
a rank that raised carries CompactRec's own prefix, added by the worker
(``trainer/entry.py``): ``rank R on node H (pid P) after step S (epoch E): <error>``. The
dead ranks come first (the others usually fail because their peer vanished), and a dead
rank is given the step its surviving peers had reached.

Example::

    rank 1 on node vm (192.0.2.2, pid 30591) died after step 3 (the step its peers reached):
    Worker exit type: SYSTEM_ERROR ...; rank 0 on node vm (pid 30590) after step 3 (epoch 0):
    RuntimeError: [gloo] Connection reset by peer
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional

_OURS = re.compile(r"rank \d+ on node \S+ \(pid \d+\) after step (\d+)[^\n]*")


def _search(pattern: str, text: str) -> Optional[str]:
    m = re.search(pattern, text)
    return m.group(1) if m else None


def _why_dead(text: str) -> str:
    m = re.search(r"Worker exit type: \S+(?: Worker exit detail: [^.]*\.)?", text)
    if m:
        return m.group(0)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "its process died"


def describe_failure(error: BaseException) -> str:
    """The failed ranks of ``error`` (Ray's ``WorkerGroupError``), dead ones first; for any
    other error, the last line of its text."""
    failures: Dict[int, BaseException] = getattr(error, "worker_failures", None) or {}
    if not failures:
        text = str(error).strip().splitlines()
        return text[-1] if text else type(error).__name__
    texts = {rank: str(err) for rank, err in sorted(failures.items())}
    ours = {rank: ([None] + list(_OURS.finditer(t)))[-1] for rank, t in texts.items()}  # the outermost: last
    steps = [int(m.group(1)) for m in ours.values() if m]
    step = max(steps) if steps else None
    dead: List[str] = []
    raised: List[str] = []
    for rank, text in texts.items():
        m = ours[rank]
        if m:
            raised.append(m.group(0))
            continue
        host = _search(r"hostname='([^']*)'", text) or "?"
        ip = _search(r"node_ip='([^']*)'", text) or _search(r"\bip: (\S+)", text) or "?"
        pid = _search(r"\bpid=(\d+)", text) or _search(r"\bpid: (\d+)", text) or "?"
        when = f" after step {step} (the step its peers reached)" if step is not None else ""
        dead.append(f"rank {rank} on node {host} ({ip}, pid {pid}) died{when}: {_why_dead(text)}")
    return "; ".join(dead + raised)
