"""``compactrec`` command line: one sub-command per task, runs changed by YAML + overrides.

    compactrec synth OUT_DIR [key=value ...]        synthetic Criteo-shaped Parquet shards
    compactrec train CONFIG [key=value ...]         train (Ray Train or local), print a summary
    compactrec submit CONFIG --address http://HEAD:8265 [key=value ...] [--follow]
                                                    run it on a Ray cluster (Jobs API), code shipped
    compactrec submit CONFIG --k8s --cluster-config configs/cluster/cpu.yaml [key=value ...] [-o FILE]
                                                    render a KubeRay RayJob manifest for kubectl apply
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import List, Optional

from compactrec.logs import quiet_third_party
from compactrec.trainer.config import ConfigError, RunConfig, load_config


def _absolute(cfg: RunConfig) -> RunConfig:
    """Local paths resolved against the caller's directory (Ray workers run elsewhere);
    URIs (s3://, gs://, hdfs://, file://) pass unchanged."""

    def resolve(p: str) -> str:
        return p if "://" in p else str(Path(p).resolve())

    return replace(cfg, data=replace(cfg.data, path=resolve(cfg.data.path)), runs_dir=resolve(cfg.runs_dir))


def ensure_data(cfg: RunConfig) -> None:
    """Generate the synthetic data set when the config asks for it and it is absent."""
    from compactrec.trainer.data.manifest import manifest_path

    if manifest_path(cfg.data.path).exists() or not cfg.data.synthesize_if_missing:
        return
    from compactrec.trainer.data.synthetic import generate

    print(f"compactrec: generating synthetic data in {cfg.data.path}", flush=True)
    generate(cfg.synth, cfg.data.path)


def check_data(cfg: RunConfig) -> None:
    """Fail in the driver, before any worker starts, if the data set is not usable."""
    from compactrec.trainer.data.manifest import read_manifest

    manifest = read_manifest(cfg.data.path)
    for split in (cfg.data.train_split, cfg.data.eval_split):
        for path in manifest.split_files(cfg.data.path, split):
            if not Path(path).exists():
                raise FileNotFoundError(f"{path}: listed in the manifest but missing")


def run_training(cfg: RunConfig) -> dict:
    cfg = _absolute(cfg)
    ensure_data(cfg)
    check_data(cfg)
    if cfg.trainer.launcher == "local":
        from compactrec.cluster.local_launcher import run_local

        return run_local(cfg)
    from compactrec.cluster.ray_launcher import run_ray

    return run_ray(cfg)


def _cmd_synth(args: argparse.Namespace) -> int:
    from compactrec.trainer.data.synthetic import generate

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

    add_submit_parser(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_third_party()
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, KeyError, ValueError, RuntimeError) as e:
        print(f"compactrec {args.command}: error: {e}", file=sys.stderr)
        return 2
