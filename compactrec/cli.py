"""``compactrec`` command line: one sub-command per task, runs changed by YAML + overrides.

    compactrec synth OUT_DIR [key=value ...]        synthetic Criteo-shaped Parquet shards
    compactrec data movielens --out DIR             MovieLens-100K (from the recbole==1.2.1 wheel), converted
    compactrec train CONFIG [key=value ...]         train (Ray Train or local), print a summary
    compactrec convert criteo INPUT... --out DIR    Criteo click logs -> Parquet shards + manifest
    compactrec sweep CONFIG [key=value ...]         every point of the config's `sweep` grid, one table
    compactrec plan CONFIG --world-size N [--hbm-gb X]   the sharding plan, bytes per rank, no training
    compactrec submit CONFIG --address http://HEAD:8265 [key=value ...] [--follow]
                                                    run it on a Ray cluster (Jobs API), code shipped
    compactrec submit CONFIG --k8s --cluster-config configs/cluster/cpu.yaml [key=value ...] [-o FILE]
                                                    render a KubeRay RayJob manifest for kubectl apply
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from compactrec.logs import quiet_third_party
from compactrec.trainer.config import ConfigError, load_config


def _cmd_synth(args: argparse.Namespace) -> int:
    from compactrec.data.datasets.synthetic import generate

    overrides = [o if o.startswith("synth.") else f"synth.{o}" for o in args.overrides]
    cfg = load_config(args.config, overrides)
    manifest = generate(cfg.synth, args.out_dir, progress=True)
    for split, info in manifest.splits.items():
        bayes = manifest.stats["bayes_auc"][split]
        ctr = manifest.stats["ctr"][split]
        print(f"{split}: {info.rows} rows in {len(info.files)} shards, CTR {ctr:.4f}, Bayes AUC {bayes:.4f}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from compactrec.trainer.summary import summary_table

    cfg = load_config(args.config, args.overrides)
    if cfg.sweep:
        raise ConfigError(f"{args.config}: declares a sweep; run it with `compactrec sweep`")
    from compactrec.cluster.run import run_training

    metrics = run_training(cfg)
    print(summary_table([metrics]))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compactrec", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write synthetic Criteo-shaped Parquet shards")
    s.add_argument("out_dir")
    s.add_argument("overrides", nargs="*", help="synth.* keys, e.g. rows_train=100000 scale=0.01")
    s.add_argument("--config", default=None, help="take the synth section from this YAML")
    s.set_defaults(fn=_cmd_synth)
    t = sub.add_parser("train", help="train one configuration")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    t.set_defaults(fn=_cmd_train)
    from compactrec.cluster.submit import add_parser as add_submit_parser
    from compactrec.cluster.sweep import add_parser as add_sweep_parser

    from compactrec.sharding.plan_report import add_parser as add_plan_parser
    from compactrec.data.convert.cli import add_parser as add_convert_parser
    from compactrec.data.datasets.cli import add_parser as add_data_parser

    add_submit_parser(sub)
    add_sweep_parser(sub)
    add_plan_parser(sub)
    add_convert_parser(sub)
    add_data_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        print(f"compactrec {args.command}: error: {e}", file=sys.stderr)
        return 2
