"""Before/after: every method's step at another git revision and in this tree, one process.

    OMP_NUM_THREADS=1 python benchmarks/speed_ab.py --before REV [--batch-size 128] [--rounds 7] [--steps 10]

On a shared machine two separate runs drift apart more than most changes move a step, so
both versions run in ONE process, alternating: ``git archive REV`` is unpacked into a
temporary folder as the package ``compactrec_before`` (its ``compactrec.*`` imports renamed),
every method's model is built with each version as ``benchmarks/speed.py`` builds it (DMP
on one gloo rank, fused rowwise Adagrad, demo data, dim 32, 16x), and the rounds visit the
twelve models in shuffled order on their own copies of the same batches. Printed per
method: median CPU ms per step of each version, each version's median per-round ratio to
its own full table, and the median per-round after/before ratio, each with [min, max].
"""

from __future__ import annotations

import argparse
import copy
import importlib
import io
import os
import random
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from speed import method_overrides, take_batches  # noqa: E402  (benchmarks/speed.py)

BEFORE = "compactrec_before"
FOLDERS = ("embeddings", "kernels", "sharding", "trainer", "data", "cluster")


def export_revision(rev: str, root: Path) -> None:
    """``rev``'s code as the package ``BEFORE`` under ``root`` (imports renamed, data not copied)."""
    tar = subprocess.run(["git", "archive", rev, "compactrec", *FOLDERS], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(root / "src", filter="data")
    pkg = root / BEFORE
    (root / "src" / "compactrec").rename(pkg)
    for f in FOLDERS:
        (root / "src" / f).rename(pkg / f)
    for py in pkg.rglob("*.py"):
        text = py.read_text()
        py.write_text(re.sub(r"\bcompactrec(?=[.\s])", BEFORE, text))


def build(version: str, kind: str, data: str, env) -> Tuple[torch.nn.Module, torch.optim.Optimizer]:
    mod = lambda name: importlib.import_module(f"{version}.{name}")  # noqa: E731
    cfg = mod("trainer.config").load_config(None, method_overrides(kind, data))
    manifest = mod("data.reader.manifest").read_manifest(data)
    with mod("embeddings.base").tables_on("meta"):
        unsharded = mod("trainer.loop").build_train_model(cfg, manifest, env.device)
    model = mod("sharding.shard").shard_model(unsharded, cfg.sharding.types, {}, env)
    return model, mod("trainer.optim").build_optimizer(model, cfg.optim)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", required=True, help="git revision to compare with (e.g. main, 96313f8)")
    p.add_argument("--data", default="datasets/demo")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--methods", nargs="+", default=["full", "hash", "qr", "memcom", "mixed_dim", "cafe"])
    args = p.parse_args()
    torch.set_num_threads(1)
    from compactrec.trainer.host_malloc import keep_freed_memory

    keep_freed_memory()  # as every training worker does (cluster.keep_freed_memory)
    from compactrec.logs import quiet_third_party
    from compactrec.data.reader.manifest import read_manifest
    from compactrec.data.reader.parquet import ParquetReader
    from compactrec.sharding.env import DistEnv, free_port, init_process_group

    quiet_third_party()
    tmp = tempfile.TemporaryDirectory(prefix="speed_ab_")
    export_revision(args.before, Path(tmp.name))
    sys.path.insert(0, tmp.name)
    init_process_group(0, 1, free_port())
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    manifest = read_manifest(args.data)
    need = (args.rounds + 1) * args.steps
    reader = ParquetReader(manifest.split_files(args.data, "train"), manifest.schema, args.batch_size, shuffle=True)
    batches = take_batches(reader, need)
    versions = (BEFORE, "compactrec")
    runs = {(v, k): build(v, k, args.data, env) for v in versions for k in args.methods}
    data = {key: copy.deepcopy(batches) for key in runs}  # no KJT caches shared between models
    times: Dict[Tuple[str, str], List[float]] = {key: [] for key in runs}
    load_start = os.getloadavg()[0]
    for r in range(args.rounds + 1):
        order = list(runs)
        random.Random(r).shuffle(order)
        for key in order:
            model, opt = runs[key]
            chunk = data[key][r * args.steps : (r + 1) * args.steps]
            c = time.process_time()
            for b in chunk:
                loss, _ = model(b)
                opt.zero_grad()
                loss.backward()
                opt.step()
            if r > 0:  # round 0 warms up
                times[key].append((time.process_time() - c) / len(chunk) * 1e3)
    med = statistics.median

    def summary(xs: List[float]) -> str:
        return f"{med(xs):.2f}x [{min(xs):.2f}, {max(xs):.2f}]"

    print(f"before = {args.before}, after = this tree; batch {args.batch_size}, one gloo rank, {args.rounds} rounds x "
          f"{args.steps} steps, process CPU time, load average {load_start:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| method | before ms | before vs full | after ms | after vs full | after / before |")
    print("|---|---|---|---|---|---|")
    for k in args.methods:
        row = [k]
        for v in versions:
            t, f = times[(v, k)], times[(v, "full")] if "full" in args.methods else times[(v, k)]
            row += [f"{med(t):.1f}", summary([a / b for a, b in zip(t, f)])]
        row.append(summary([a / b for a, b in zip(times[("compactrec", k)], times[(BEFORE, k)])]))
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
