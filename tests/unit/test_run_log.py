"""Run logs: the log file keeps every line (colour codes and progress redraws removed); the
console drops Ray's own noise (C++ log lines, tracebacks whose frames are all inside Ray, its
controller's narration) and keeps everything else, a traceback through our code included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from compactrec.run_log import ConsoleFilter, _clean

RAY = "/work/x/.venv/lib/python3.11/site-packages/ray"
RAY_THREAD_CRASH = [
    "Exception in thread PlacementGroupCleanerMonitor:",
    "Traceback (most recent call last):",
    '  File "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py", line 1045, in _bootstrap_inner',
    "    self.run()",
    f'  File "{RAY}/train/v2/_internal/execution/controller/placement_group_cleaner.py", line 80, in _monitor_loop',
    "    alive = is_actor_alive(",
    f'  File "{RAY}/_private/services.py", line 759, in canonicalize_bootstrap_address_or_die',
    "ConnectionError: Found multiple active Ray instances: {'192.0.2.2:36961', '192.0.2.2:34273'}.",
]
OUR_ERROR = [
    "(RayTrainWorker pid=7) Traceback (most recent call last):",
    '(RayTrainWorker pid=7)   File "/root/.pyenv/versions/3.11.7/lib/python3.11/threading.py", line 1045, in run',
    '(RayTrainWorker pid=7)   File "/work/x/trainer/loop.py", line 12, in train',
    "(RayTrainWorker pid=7) ValueError: column 'cat_3' row 5 has id 99 outside [0, 8)",
]


def _console(lines):
    f = ConsoleFilter()
    out = [x for line in lines for x in f.feed((line + "\n").encode())] + f.flush()
    return [x.decode().rstrip("\n") for x in out]


def test_console_drops_ray_noise_and_keeps_the_rest():
    lines = [
        "compactrec: demo: launch 20261201-184440-609b in runs/demo/20261201-184440-609b",
        "[2026-12-01 18:40:44,926 E 10208 10238] core_worker.cc:2465: Actor with class name: 'PreemptionWatcher' has ...",
        "Requesting resources: {'CPU': 1} * 2",
        "\x1b[36m(pid=3)\x1b[0m - (ip=192.0.2.2, pid=10354) world_rank=0, local_rank=0, node_rank=0",
        *RAY_THREAD_CRASH,
        *OUR_ERROR,
        "| run | method |",
    ]
    shown = _console(lines)
    assert shown == [lines[0], *OUR_ERROR, "| run | method |"]


def test_the_file_gets_clean_lines():
    redraws = b"\x1b[2m\x1b[36m(pid=1)\x1b[0m epoch 0:  50%\r(pid=1) epoch 0: 100%\r\n"  # a tqdm bar
    assert _clean(redraws) == b"(pid=1) epoch 0: 100%\n"


def test_run_log_tees_file_descriptors(tmp_path: Path):
    """In a fresh process: C-level writes (os.write on fd 2) and Python prints both reach the
    file; the console (a pipe here, not a terminal) gets no colour codes and no Ray noise."""
    log = tmp_path / "log.txt"
    code = (
        "import os, sys\n"
        "from compactrec.run_log import RunLog\n"
        f"with RunLog({str(log)!r}, verbose=False):\n"
        "    print('hello from python \\x1b[32mgreen\\x1b[0m', flush=True)\n"
        "    os.write(2, b'[2026-12-01 18:40:44,926 E 1 2] core_worker.cc:1: noise\\n')\n"
        "    os.write(1, b'from C\\n')\n"
        "print('after')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "COMPACTREC_VERBOSE": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["hello from python green", "from C", "after"]
    assert "core_worker" not in r.stderr
    text = log.read_text()
    assert "hello from python green" in text and "from C" in text and "core_worker.cc:1: noise" in text
    assert "\x1b" not in text and "after" not in text
