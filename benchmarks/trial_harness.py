"""Harness of the trial (``benchmarks/trial.py``): run a command in-process or in a
subprocess, and classify what it did (``expect_error``, ``expect_ok``)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.* helpers (tiny data, Criteo lines)

from compactrec.logs import quiet_third_party  # noqa: E402

quiet_third_party()

OUTCOMES = ("clear", "recovered", "crash", "silent", "lost", "code run")
HASH_CONFIG = str(REPO / "configs" / "methods" / "hash.yaml")
TINY = ["trainer.progress_bar=false", "trainer.tensorboard=false", "data.batch_size=128", "data.eval_batch_size=512",
        "trainer.launcher=local", "cluster.num_workers=1", "trainer.max_steps=4"]


@dataclass
class Run:
    """What a command did: exit code (None: it raised), its output, the exception."""

    rc: Optional[int]
    out: str
    err: str
    exc: str = ""  # traceback text when it raised

    @property
    def text(self) -> str:
        return self.out + self.err + self.exc


@dataclass
class Result:
    case: str
    group: str
    outcome: str
    detail: str
    seconds: float = 0.0


@dataclass
class Ctx:
    """Shared state of a trial: the work folder, the tiny data, a saved base run."""

    work: Path
    data: Path = field(init=False)
    markers: List[Path] = field(default_factory=list)
    _base: Optional[Tuple[Path, Dict[str, Any]]] = None

    def __post_init__(self) -> None:
        from tests.conftest import make_data

        self.data = self.work / "data"
        if not (self.data / "_manifest.json").exists():
            make_data(self.data)

    def path(self, name: str) -> Path:
        p = self.work / name
        shutil.rmtree(p, ignore_errors=True)
        return p

    def marker(self, name: str) -> Path:
        m = self.work / "markers" / name
        m.parent.mkdir(parents=True, exist_ok=True)
        m.unlink(missing_ok=True)
        self.markers.append(m)
        return m

    def base(self) -> Tuple[Path, Dict[str, Any]]:
        """A finished run with checkpoints at steps 2 and 4: (its checkpoints folder, metrics)."""
        if self._base is None:
            runs = self.path("base_runs")
            r = cli("train", HASH_CONFIG, *TINY, f"data.path={self.data}", f"runs_dir={runs}", "name=base",
                    "trainer.checkpoint_every=2", "trainer.keep_checkpoints=3")
            assert r.rc == 0, r.text[-3000:]
            self._base = (launch(runs, "base") / "checkpoints", metrics(runs, "base"))
        return self._base


def cli(*args: str) -> Run:
    """``compactrec ARGS`` in this process, output captured."""
    from compactrec.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:
            rc = int(e.code) if isinstance(e.code, int) else 2
        except BaseException:  # noqa: BLE001 - a crash is an outcome here
            return Run(None, out.getvalue(), err.getvalue(), traceback.format_exc())
    return Run(rc, out.getvalue(), err.getvalue())


def sub(*args: str, timeout: int = 900) -> Run:
    """``python -m compactrec ARGS`` in a subprocess."""
    r = subprocess.run([sys.executable, "-m", "compactrec", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    return Run(r.returncode, r.stdout, r.stderr)


def train(ctx: Ctx, runs: Path, name: str, *extra: str, data: Optional[Path] = None) -> Run:
    return cli("train", HASH_CONFIG, *TINY, f"data.path={data or ctx.data}", f"runs_dir={runs}", f"name={name}", *extra)


def launch(runs: Path, name: str) -> Path:
    """The newest launch folder of run ``name`` (``runs/<name>/latest``, resolved)."""
    return (runs / name / "latest").resolve()


def metrics(runs: Path, name: str) -> Dict[str, Any]:
    return json.loads((launch(runs, name) / "metrics.json").read_text())


def expect_error(run: Run, pattern: str) -> Tuple[str, str]:
    """``clear`` when the command stopped through CompactRec's own error path (exit 2, or 130
    for Ctrl-C) with a message matching ``pattern``. An exception that escaped, another exit
    code (1: Python's uncaught exception, a signal) or a message that does not match is a
    ``crash``. Ray's forwarded worker logs may hold tracebacks above the final line: they are
    logs, the exit path is what counts."""
    if run.exc:
        return "crash", run.exc.strip().splitlines()[-1][:200]
    if run.rc == 0:
        return "silent", "exit 0"
    ours = [line for line in run.err.splitlines() if line.startswith("compactrec ")]
    msg = (ours or run.err.strip().splitlines() or [""])[-1][:300]
    if run.rc not in (2, 130):
        return "crash", f"exit {run.rc}: {msg}"
    return ("clear", msg) if re.search(pattern, run.err) else ("crash", f"unclear error: {msg}")


def expect_ok(run: Run, check: Callable[[], Tuple[bool, str]]) -> Tuple[str, str]:
    """``recovered`` when the command succeeded and ``check()`` holds; ``silent`` otherwise."""
    if run.exc:
        return "crash", run.exc.strip().splitlines()[-1][:200]
    if run.rc != 0:
        return "crash", f"exit {run.rc}: " + (run.err.strip().splitlines() or [""])[-1][:200]
    ok, detail = check()
    return ("recovered" if ok else "silent"), detail


Outcome = Tuple[str, str]  # (one of OUTCOMES, what it said / did)
CASES: List[Tuple[str, str, Callable[[Ctx], Outcome], bool]] = []  # (name, group, fn, slow), run in order


def case(group: str, slow: bool = False):
    """Register ``fn(ctx) -> Outcome`` as a case of ``group`` under its own name."""

    def register(fn):
        CASES.append((fn.__name__, group, fn, slow))
        return fn

    return register
