"""Where CAFE's hot rows go on a real data set: the hot ids per feature after each epoch, and
the share of the test rows' ids that are hot at the end (docs/quality.md, session 8).

    OMP_NUM_THREADS=1 python benchmarks/cafe_hot_set.py [--dataset movielens] [--ratio 10]
        [--epochs 3] [--seed 0] [--set key=value ...]

Trains ``configs/<set>.yaml`` with ``embedding.kind=cafe`` as ``benchmarks/real_data.py`` does
(the same builders, DMP over a world of 1), at the full table's tuned rates unless ``--set``
says otherwise (``optim.sparse_lr=...``). Prints, after each epoch, how many hot slots are held
and by which feature; then, per one-hot compressed feature, the share of its test occurrences
whose id is hot. About 1 min per epoch on MovieLens-100K.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import List, Optional

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

import real_data as rd  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="movielens", choices=list(rd.DATASETS))
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--ratio", type=float, default=10.0)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparse-lr", type=float, default=0.03, help="MovieLens' tuned full-table rate")
    ap.add_argument("--dense-lr", type=float, default=0.1)
    ap.add_argument("--set", nargs="*", default=[])
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ds = rd.DATASETS[args.dataset]
    data = rd.prepare_data(ds, args.data_dir)
    cfg = rd.seeded(rd.load_config(ds.config, [
        f"data.path={data}", "trainer.progress_bar=false", "trainer.tensorboard=false",
        f"trainer.epochs={args.epochs}", f"optim.sparse_lr={args.sparse_lr}", f"optim.dense_lr={args.dense_lr}",
        "embedding.kind=cafe", f"compression.ratio={args.ratio}", *args.set]), args.seed)
    manifest = rd.read_manifest(data)
    rd.init_process_group(0, 1, rd.free_port())
    try:
        env = rd.current_env("cpu")
        model = rd.shard_model(rd.build_train_model(cfg, manifest), cfg.sharding.types, cfg.sharding.per_table, env)
        engine = rd.build_dense_engine(cfg.dense, cfg.optim, model, env)
        reader = rd.make_readers(cfg, manifest, env)[0]
        cafe = rd.embedding_module(model)
        names = [f.name for f in cafe.compressed]
        starts = torch.tensor([cafe.offsets[n] for n in names])  # each feature's first key in the sketch
        before = torch.empty(0, dtype=torch.int64)
        for epoch in range(cfg.trainer.epochs):
            rd.train_epoch(engine, reader, epoch, env.device)
            cafe.flush()
            keys, _ = cafe.sketch.hot_keys()
            feature = torch.searchsorted(starts, keys, right=True) - 1
            by = Counter(names[i] for i in feature.tolist())
            kept = int(torch.isin(keys, before).sum())
            before = keys.clone()
            print(f"epoch {epoch + 1}: {keys.numel()} of {cafe.plan.hot_rows} hot slots held ({kept} by ids hot "
                  "after the previous epoch); " + ", ".join(f"{n} {c}" for n, c in by.most_common()))
        test = pq.read_table(str(data / "test"))
        multi = {f.name for f in manifest.schema.sparse if f.multi_hot}
        for i, name in enumerate(names):
            if name in multi:
                continue
            hot = torch.unique(keys[feature == i] - cafe.offsets[name])
            ids = torch.from_numpy(test.column(name).to_numpy().astype("int64"))
            share = torch.isin(ids, hot).double().mean().item()
            print(f"{name}: {hot.numel()} hot ids hold {100 * share:.1f}% of its test occurrences")
    finally:
        rd.close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
