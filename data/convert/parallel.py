"""Run conversion tasks on a process pool with one progress bar (bytes and rows).

Workers are spawned (not forked: the caller may hold torch or threads) and report progress
through a queue as they go, so a long task (a whole ``.gz`` day) still moves the bar. The
first failing task cancels the rest and its exception is raised in the caller; so does
Ctrl-C (workers ignore SIGINT and are terminated by the driver), and workers exit by
themselves when the driver is killed outright (``_die_with``).
``workers <= 1`` runs the tasks in this process (tests, debugging).

Example::

    results = run_tasks(convert_task, tasks, workers=8, total_bytes=sum(sizes), desc="convert")
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Dict, List, Optional, Sequence

Report = Callable[[int, int], None]  # (bytes, rows) done since the last call
_QUEUE: Optional[Any] = None


def _init(q: Any, parent: int) -> None:
    """Worker start-up: Ctrl-C is the driver's to handle (a terminal sends SIGINT to the
    whole process group; workers that got it too would each print a traceback), and the
    worker dies with the driver (a SIGKILLed driver cannot terminate its pool)."""
    global _QUEUE
    _QUEUE = q
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)


def _die_with(parent: int) -> None:
    """Exit when process ``parent`` is gone: Linux's PR_SET_PDEATHSIG where there is one,
    and everywhere a daemon thread that sees the worker re-parented."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the driver died before the prctl took effect
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-driver", daemon=True).start()


def _report_to_queue(nbytes: int, rows: int) -> None:
    if _QUEUE is not None:
        _QUEUE.put((nbytes, rows))


def _call(fn: Callable[[Any, Report], Any], task: Any) -> Any:
    return fn(task, _report_to_queue)


class _Bar:
    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        self.rows = 0
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, smoothing=0.05)

    def __call__(self, nbytes: int, rows: int) -> None:
        if self.bar is None:
            return
        self.rows += rows
        self.bar.update(nbytes)
        if rows:
            self.bar.set_postfix_str(f"{self.rows:,} rows", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_tasks(
    fn: Callable[[Any, Report], Any],
    tasks: Sequence[Any],
    workers: int,
    total_bytes: int,
    desc: str,
    progress: bool = True,
    done_bytes: int = 0,
) -> List[Any]:
    """``[fn(task, report) for task in tasks]``, in task order, on ``workers`` processes."""
    bar = _Bar(total_bytes, desc, progress)
    bar(done_bytes, 0)
    try:
        if workers <= 1 or len(tasks) <= 1:
            return [fn(t, bar) for t in tasks]
        return _run_pool(fn, tasks, workers, bar)
    finally:
        bar.close()


def _run_pool(fn: Callable[[Any, Report], Any], tasks: Sequence[Any], workers: int, bar: _Bar) -> List[Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    results: Dict[int, Any] = {}
    with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=ctx, initializer=_init, initargs=(q, os.getpid())) as pool:
        pending: Dict[Future, int] = {pool.submit(_call, fn, t): i for i, t in enumerate(tasks)}
        try:
            while pending:
                done, _ = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(q, bar)
                for fut in done:
                    results[pending.pop(fut)] = fut.result()  # raises the task's error
        except BaseException:
            # Stop now rather than finish the pieces in flight: their temp files are
            # removed (and the pieces redone) by the next run.
            procs = list((getattr(pool, "_processes", None) or {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in procs:
                proc.terminate()
            for proc in procs:  # gone before the driver returns (or exits on Ctrl-C)
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
            raise
        finally:
            _drain(q, bar)
    return [results[i] for i in range(len(tasks))]


def _drain(q: Any, bar: _Bar) -> None:
    while True:
        try:
            nbytes, rows = q.get_nowait()
        except queue.Empty:
            return
        bar(nbytes, rows)
