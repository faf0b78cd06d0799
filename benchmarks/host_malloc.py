"""A training step with glibc's default malloc against ``keep_freed_memory`` (trainer/host_malloc.py).

    OMP_NUM_THREADS=1 python benchmarks/host_malloc.py [--batch-size 2048] [--rounds 6] [--steps 40]
        [--methods full mixed_dim]

malloc's settings hold for a whole process, so each round runs two fresh processes, one per
setting (order alternating), each building every method as ``speed.py`` does (DMP on one gloo
rank, the demo data, dim 32, 16x), warming up, then timing ``--steps`` steps per method in
process CPU time with the minor page faults counted (``getrusage``). Printed: CPU ms and
faults per step (medians over rounds), the speed-up (median [min, max] of the per-round
ratios default / keep) and the load average at start and end.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
SETTINGS = ("default", "keep")


def child(args) -> None:
    """One process: (CPU ms, faults) per step of each method under one malloc setting; a JSON line out."""
    if args.child == "keep":
        from compactrec.trainer.host_malloc import keep_freed_memory

        assert keep_freed_memory(), "mallopt failed"
    import torch

    from compactrec.logs import quiet_third_party

    quiet_third_party()
    torch.set_num_threads(1)
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.sharding.env import DistEnv, free_port, init_process_group
    from compactrec.sharding.shard import shard_model
    from compactrec.trainer.config import load_config
    from compactrec.trainer.loop import build_train_model
    from compactrec.trainer.optim import build_optimizer

    from speed import _build, method_overrides, take_batches  # benchmarks/speed.py

    init_process_group(0, 1, free_port())
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    manifest = read_manifest(args.data)
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True)
    batches = take_batches(reader, args.steps + 10)
    out = {}
    for kind in args.methods:
        cfg = load_config(None, method_overrides(kind, args.data))
        model = shard_model(_build(build_train_model, cfg, manifest, env), cfg.sharding.types, {}, env)
        opt = build_optimizer(model, cfg.optim)
        data = copy.deepcopy(batches)  # a KJT caches what TorchRec computes from it

        def run(chunk) -> None:
            for b in chunk:
                loss, _ = model(b)
                opt.zero_grad()
                loss.backward()
                opt.step()

        run(data[:10])
        faults, cpu = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        run(data[10:])
        out[kind] = ((time.process_time() - cpu) / args.steps * 1e3,
                     (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / args.steps)
    print("RESULT " + json.dumps(out), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--methods", nargs="+", default=["full", "mixed_dim"])
    p.add_argument("--child", choices=SETTINGS, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return 0
    from compactrec.cluster.run import ensure_data
    from compactrec.trainer.config import load_config

    ensure_data(load_config(None, [f"data.path={args.data}", "data.synthesize_if_missing=true"]))
    load_start = os.getloadavg()[0]
    res = {s: [] for s in SETTINGS}
    for r in range(args.rounds):
        for s in (SETTINGS if r % 2 == 0 else SETTINGS[::-1]):
            cmd = [sys.executable, __file__, "--child", s, "--data", args.data, "--batch-size", str(args.batch_size),
                   "--steps", str(args.steps), "--methods", *args.methods]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"host_malloc: the {s} process failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            res[s].append(json.loads(line[7:]))
    print(f"demo DLRM, dim 32, batch {args.batch_size}, one rank, {args.rounds} rounds x {args.steps} steps, "
          f"load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| method | default: CPU ms / step | faults / step | keep_freed_memory: CPU ms / step | faults / step "
          "| speed-up (median [min, max]) |")
    print("|---|---|---|---|---|---|")
    for k in args.methods:
        d = [x[k] for x in res["default"]]
        e = [x[k] for x in res["keep"]]
        ratio = [a[0] / b[0] for a, b in zip(d, e)]
        med = lambda xs, i: statistics.median(x[i] for x in xs)  # noqa: E731
        print(f"| {k} | {med(d, 0):.1f} | {med(d, 1):.0f} | {med(e, 0):.1f} | {med(e, 1):.0f} | "
              f"{statistics.median(ratio):.2f}x [{min(ratio):.2f}, {max(ratio):.2f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
