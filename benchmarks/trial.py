"""The bad-input, fault and tampering trial (issue 15), redone as a script.

    OMP_NUM_THREADS=1 python benchmarks/trial.py [--only SUBSTRING] [--skip-slow] [--work DIR]

Every case (``benchmarks/trial_cases/``, one module per group) does what a new user or an attacker would:
a bad knob, a bad value in a shard, a planted or damaged checkpoint file, a resume with
other settings, a killed worker or converter. Each ends in one outcome:

- ``clear``: the run stops (exit 2 / 130) with a message that names what is wrong (file,
  row group, row, column, key and where it came from), no Python traceback;
- ``recovered``: the right result (a damaged checkpoint skipped with a warning and the run
  bitwise equal to an uninterrupted one, a conversion resumed byte-identically, ...);
- ``crash``: a traceback, or an error that does not name what is wrong;
- ``silent``: exit 0 with a wrong result (NaN metrics, a resume that should be refused);
- ``lost``: a checkpoint or output that should exist is gone;
- ``code run``: a planted pickle ran (its marker file exists). Checked after every case.

Runs in-process where it can (``compactrec.cli.main``, local launcher, 1 worker), in
subprocesses for signals and Ray. Writes ``benchmarks/results/trial.{json,md}``. About
5 minutes on 2 loaded cores (``--skip-slow`` leaves out the Ray and 2-rank cases: ~2 min).
``benchmarks/results/trial_before_issue15.md``: the same cases against the code before issue 15.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import List

from trial_harness import OUTCOMES, REPO, Ctx, Result


def run_cases(cases, ctx: Ctx, only: str, skip_slow: bool) -> List[Result]:
    results = []
    for name, group, fn, slow in cases:
        if only and only not in name:
            continue
        if skip_slow and slow:
            continue
        t0 = time.perf_counter()
        try:
            outcome, detail = fn(ctx)
        except Exception as e:  # noqa: BLE001 - the harness itself must not stop the trial
            outcome, detail = "crash", f"harness: {type(e).__name__}: {e}"[:300]
        ran = [m for m in ctx.markers if m.exists()]
        if ran:
            outcome, detail = "code run", f"marker written: {ran[0].name}; {detail}"
            for m in ran:
                m.unlink()
        results.append(Result(name, group, outcome, detail, time.perf_counter() - t0))
        print(f"{outcome:>9}  {name}  ({results[-1].seconds:.0f} s)  {detail[:160]}", flush=True)
    return results


def report(results: List[Result], out: Path) -> str:
    counts = {o: sum(r.outcome == o for r in results) for o in OUTCOMES}
    lines = [
        f"cases tried: {len(results)}; clear error: {counts['clear']}; recovered exactly: {counts['recovered']}; "
        f"crash: {counts['crash']}; silent: {counts['silent']}; lost: {counts['lost']}; code run: {counts['code run']}",
        "",
        "| group | case | outcome | what it said / did |",
        "|---|---|---|---|",
    ]
    for r in results:
        detail = r.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r.group} | {r.case} | {r.outcome} | {detail[:220]} |")
    text = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    (out.with_suffix(".md")).write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps({"counts": {"tried": len(results), **counts},
                                                      "cases": [asdict(r) for r in results]}, indent=2) + "\n")
    return lines[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the cases whose name contains this")
    p.add_argument("--skip-slow", action="store_true", help="leave out Ray and 2-rank cases")
    p.add_argument("--work", default=None, help="work folder (default: a new temporary one)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "trial"))
    args = p.parse_args()
    from trial_cases import CASES

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="compactrec-trial-"))
    work.mkdir(parents=True, exist_ok=True)
    results = run_cases(CASES, Ctx(work), args.only, args.skip_slow)
    print(report(results, Path(args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
