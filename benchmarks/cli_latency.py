"""How fast the command line answers: ``compactrec --help``, ``compactrec train --help`` and a
usage error (``compactrec train`` without its config), each in a fresh process, against a bare
``python -c pass``; the commands alternate for ``--rounds`` rounds and the script prints the
median and [min, max] wall time of each (the shared machine's load moves single figures).

    python benchmarks/cli_latency.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

CLI = str(Path(sys.executable).parent / "compactrec")
CASES = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "compactrec --help": [CLI, "--help"],
    "compactrec train --help": [CLI, "train", "--help"],
    "compactrec train (usage error)": [CLI, "train"],
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    times = {name: [] for name in CASES}
    for _ in range(args.rounds):
        for name, cmd in CASES.items():
            t0 = time.perf_counter()
            r = subprocess.run(cmd, capture_output=True)
            times[name].append(time.perf_counter() - t0)
            if r.returncode not in (0, 2):
                raise SystemExit(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.decode()[-500:]}")
    for name, ts in times.items():
        print(f"{name:32s} {statistics.median(ts) * 1000:7.0f} ms  [{min(ts) * 1000:.0f}, {max(ts) * 1000:.0f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
