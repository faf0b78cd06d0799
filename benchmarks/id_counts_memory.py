"""Peak host memory of mixed_dim's count step on one 40M-id feature (synthetic).

Writes FILES Parquet files of a Zipf-distributed feature with 40M possible ids, then, in a
fresh process each (so ru_maxrss is the step's own peak), runs
``count_ids_sparse`` (the count: sample spread over every file, sorted-unique counting) and
``count_ids`` (the same plus the dense (cardinality,) array the MDE builder takes today).
Prints the peak RSS above the interpreter's baseline, in MB.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/id_counts_memory.py [--rows-per-file 1000000] [--sample 200000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

CARD = 40_000_000
FILES = 8


def _write(root: Path, rows: int, group: int) -> list:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(FILES):
        ids = (rng.zipf(1.1, rows) - 1) % CARD  # heavy head, long tail over 40M ids
        ids = (ids * 2654435761 + i) % CARD  # spread the head over the id range
        p = root / f"part-{i}.parquet"
        pq.write_table(pa.table({"cat_0": ids.astype(np.int64)}), p, row_group_size=group)
        paths.append(str(p))
    return paths


def _measure(files: list, sample: int, which: str) -> dict:
    code = f"""
import json, resource
from compactrec.data.reader.id_counts import count_ids, count_ids_sparse
from compactrec.data.reader.manifest import FeatureSchema, SparseFeature
schema = FeatureSchema("label", (), (SparseFeature("cat_0", {CARD}),))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = {which}({files!r}, schema, {sample})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
v = out["cat_0"]
distinct = int(v[0].size) if isinstance(v, tuple) else int((v > 0).sum())
print(json.dumps({{"base_mb": base / 1024, "peak_mb": peak / 1024, "step_mb": (peak - base) / 1024, "distinct": distinct}}))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows-per-file", type=int, default=1_000_000)
    ap.add_argument("--group", type=int, default=131_072)
    ap.add_argument("--sample", type=int, default=200_000, help="embedding.mixed_dim.sample_rows")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = _write(Path(tmp), args.rows_per_file, args.group)
        for which in ("count_ids_sparse", "count_ids"):
            r = _measure(files, args.sample, which)
            print(f"{which}: {FILES} files x {args.rows_per_file:,} rows, cardinality {CARD:,}, sample {args.sample:,} rows: "
                  f"peak RSS {r['peak_mb']:.0f} MB (interpreter + imports {r['base_mb']:.0f} MB, the step {r['step_mb']:.0f} MB), "
                  f"{r['distinct']:,} distinct ids")


if __name__ == "__main__":
    main()
