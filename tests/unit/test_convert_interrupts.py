"""The converter under interruption: Ctrl-C stops it cleanly (no traceback, workers gone,
the next run finishes the job), its pool workers die with a SIGKILLed driver, and a
truncated .gz names the byte where it ends.

The inputs of the interrupted runs are named pipes: a worker that opens one blocks until
the test writes, so "a conversion in the middle of its pieces" is a state the test waits
for, not a race against the clock."""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import psutil
import pytest

from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo
from compactrec.data.convert.text_input import TextError
from tests.unit.test_criteo_convert import SMALL, write_tsv

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120  # liveness bound for process start-up on a loaded machine (not a timing assertion)


def _start_driver(inputs: List[Path], out: Path) -> subprocess.Popen:
    code = "import sys; from compactrec.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen(
        [sys.executable, "-c", code, "convert", "criteo", *map(str, inputs), "--out", str(out), "--workers", "2", "--no-progress"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )


def _connect(fifo: Path, driver: subprocess.Popen) -> int:
    """The write end of ``fifo`` once a worker has opened it for reading."""
    end = time.monotonic() + DEADLINE_S
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as e:
            if e.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        if driver.poll() is not None:
            raise AssertionError(f"driver exited early: {driver.communicate()}")
        if time.monotonic() > end:
            raise AssertionError(f"no worker opened {fifo}")
        time.sleep(0.05)


def _converting(tmp_path: Path):
    """A driver whose two workers are each half-way into a .gz piece; returns (driver,
    its worker processes, write ends)."""
    fifos = [tmp_path / "raw" / f"day_{i}.gz" for i in (0, 1)]
    fifos[0].parent.mkdir()
    for f in fifos:
        os.mkfifo(f)
    driver = _start_driver(fifos, tmp_path / "out")
    ends = [_connect(f, driver) for f in fifos]
    head = gzip.compress(b"0\t1\t2\t3\t4\t5\t6\t7\t8\t9\t10\t11\t12\t" + b"\t".join([b"68fd1e64"] * 26) + b"\n" * 1000)
    for fd in ends:
        os.write(fd, head[: len(head) // 2])  # the rest never comes: the worker waits mid-stream
    workers = [p for p in psutil.Process(driver.pid).children(recursive=True) if p.pid != driver.pid]
    return driver, workers, ends


def test_ctrl_c_stops_cleanly_and_the_next_run_finishes(tmp_path: Path):
    driver, workers, ends = _converting(tmp_path)
    try:
        os.killpg(driver.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        _, err = driver.communicate(timeout=DEADLINE_S)
        assert driver.returncode == 130, err
        assert "interrupted" in err and "run the same command again" in err
        assert "Traceback" not in err and "KeyboardInterrupt" not in err
        _, alive = psutil.wait_procs(workers, timeout=DEADLINE_S)
        assert not alive  # the driver stopped its pool before it returned
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()
    for i in (0, 1):  # the same inputs, now real files: the interrupted run left nothing in the way
        (tmp_path / "raw" / f"day_{i}.gz").unlink()
        write_tsv(tmp_path / "raw" / f"day_{i}.gz", 120, seed=i, gz=True)
    inputs = [str(tmp_path / "raw" / f"day_{i}.gz") for i in (0, 1)]
    opts = ConvertOptions(progress=False)  # the command line's defaults, as the interrupted run had
    convert_criteo(inputs, tmp_path / "ref", opts)
    m = convert_criteo(inputs, tmp_path / "out", opts)
    assert m.splits["train"].rows == 240
    shards = lambda root: {p.relative_to(root): p.read_bytes() for p in sorted(root.glob("train/*.parquet"))}
    assert shards(tmp_path / "out") == shards(tmp_path / "ref")


def test_workers_die_with_a_killed_driver(tmp_path: Path):
    driver, workers, ends = _converting(tmp_path)
    try:
        assert len(workers) >= 2
        driver.kill()  # SIGKILL: the driver cannot clean up
        driver.wait(timeout=DEADLINE_S)
        _, alive = psutil.wait_procs(workers, timeout=DEADLINE_S)
        assert not alive, [p.cmdline()[-3:] for p in alive]
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()


def test_a_truncated_gz_names_the_byte_where_it_ends(tmp_path: Path):
    path = tmp_path / "day_0.gz"
    write_tsv(path, 400, gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(TextError) as e:
        convert_criteo([str(path)], tmp_path / "out", ConvertOptions(**SMALL))
    msg = str(e.value)
    assert f"day_0.gz: truncated (or corrupt) gzip file: it ends at byte {len(data) * 2 // 3} inside a compressed stream" in msg
    text = int(msg.split("after ")[1].split(" bytes")[0])
    assert 0 < text < len(gzip.decompress(data))  # how far the text got
