"""Trial cases of group convert (benchmarks/trial.py): the converter: bad .gz and lines, other
options, Ctrl-C and a killed driver."""

from __future__ import annotations

import errno
import gzip
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Tuple

from trial_harness import REPO, Ctx, Outcome, Run, case, cli, expect_error


def _tsv(path: Path, lines: int, gz: bool, seed: int = 0, bad=None) -> None:
    from tests.unit.test_criteo_convert import write_tsv

    write_tsv(path, lines, seed=seed, gz=gz, bad=bad)


def _convert(*args: str) -> Run:
    return cli("convert", "criteo", *args, "--no-progress", "--workers", "1")


@case("convert")
def convert_truncated_gz(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_trunc")
    _tsv(d / "day_0.gz", 400, gz=True)
    data = (d / "day_0.gz").read_bytes()
    cut = len(data) * 2 // 3
    (d / "day_0.gz").write_bytes(data[:cut])
    return expect_error(_convert(str(d / "day_0.gz"), "--out", str(d / "out")), rf"day_0.gz: truncated .*ends at byte {cut}")


@case("convert")
def convert_corrupt_gz(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_corrupt")
    _tsv(d / "day_0.gz", 400, gz=True)
    raw = bytearray((d / "day_0.gz").read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\xff" * 16
    (d / "day_0.gz").write_bytes(bytes(raw))
    return expect_error(_convert(str(d / "day_0.gz"), "--out", str(d / "out")), r"day_0.gz: (corrupt gzip data in compressed bytes \d+|truncated)")


@case("convert")
def convert_malformed_line(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_bad")
    _tsv(d / "day_0", 120, gz=False, bad={90: ("1\t2\t3", "")})
    return expect_error(_convert(str(d / "day_0"), "--out", str(d / "out")), r"day_0:91: 3 field\(s\), expected 40")


@case("convert")
def convert_other_options_refused(ctx: Ctx) -> Outcome:
    d = ctx.path("conv_opts")
    _tsv(d / "day_0", 60, gz=False)
    _convert(str(d / "day_0"), "--out", str(d / "out"))
    return expect_error(_convert(str(d / "day_0"), "--out", str(d / "out"), "--max-ids", "100"), r"holds a conversion with other options")


def _fifo_driver(d: Path):
    """A converter driver whose 2 workers are each half-way into a .gz fed by a named pipe."""
    import psutil

    fifos = [d / "raw" / f"day_{i}.gz" for i in (0, 1)]
    fifos[0].parent.mkdir(parents=True)
    for f in fifos:
        os.mkfifo(f)
    code = "import sys; from compactrec.cli import main; sys.exit(main(sys.argv[1:]))"
    driver = subprocess.Popen([sys.executable, "-c", code, "convert", "criteo", *map(str, fifos), "--out", str(d / "out"),
                               "--workers", "2", "--no-progress"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True)
    ends = []
    for f in fifos:
        end = time.monotonic() + 120
        while True:
            try:
                ends.append(os.open(f, os.O_WRONLY | os.O_NONBLOCK))
                break
            except OSError as e:
                if e.errno != errno.ENXIO or driver.poll() is not None or time.monotonic() > end:
                    raise RuntimeError(f"no worker opened {f}") from None
                time.sleep(0.05)
    head = gzip.compress(b"x" * 100000)
    for fd in ends:
        os.write(fd, head[: len(head) // 2])
    workers = [p for p in psutil.Process(driver.pid).children(recursive=True)]
    return driver, workers, ends, fifos


def _rerun_matches(d: Path, fifos: List[Path]) -> Tuple[bool, str]:
    from compactrec.data.convert.criteo_convert import ConvertOptions, convert_criteo

    for i, f in enumerate(fifos):
        f.unlink()
        _tsv(f, 120, gz=True, seed=i)
    opts = ConvertOptions(progress=False)
    convert_criteo([str(f) for f in fifos], d / "ref", opts)
    convert_criteo([str(f) for f in fifos], d / "out", opts)
    same = all((d / "out" / p.relative_to(d / "ref")).read_bytes() == p.read_bytes() for p in (d / "ref").glob("train/*.parquet"))
    return same, f"re-run byte-identical: {same}"


@case("convert")
def convert_ctrl_c(ctx: Ctx) -> Outcome:
    import psutil

    d = ctx.path("conv_sigint")
    driver, workers, ends, fifos = _fifo_driver(d)
    try:
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=120)
        _, alive = psutil.wait_procs(workers, timeout=60)
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()
    if "Traceback" in err or driver.returncode != 130 or alive:
        return "crash", f"exit {driver.returncode}, traceback: {'Traceback' in err}, workers alive: {len(alive)}"
    same, detail = _rerun_matches(d, fifos)
    return ("clear" if same else "lost"), f"exit 130, no traceback; {detail}"


@case("convert")
def convert_driver_sigkill(ctx: Ctx) -> Outcome:
    import psutil

    d = ctx.path("conv_sigkill")
    driver, workers, ends, fifos = _fifo_driver(d)
    try:
        driver.kill()
        driver.wait(timeout=60)
        _, alive = psutil.wait_procs(workers, timeout=60)
    finally:
        for fd in ends:
            os.close(fd)
        for p in workers:
            if p.is_running():
                p.kill()
    if alive:
        return "silent", f"{len(alive)} workers kept running after the driver died"
    same, detail = _rerun_matches(d, fifos)
    return ("recovered" if same else "lost"), f"workers died with the driver; {detail}"


