"""``compactrec plan``: its arguments (imported when the parser is built: no torch here) and
its handler, which loads ``plan_report`` (torch, TorchRec) only when the command runs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Print the sharding plan of a run for N ranks, without training: per table its sharding
type, its ranks and the bytes on each; then per rank, with the state every rank replicates.
The model is built on the meta device, so a Criteo-TB plan needs no memory for its tables.

example:
  compactrec plan configs/criteo_tb_cafe.yaml --world-size 64 --hbm-gb 80
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("plan", help="print the sharding plan for N ranks without training",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--hbm-gb", type=float, default=None, help="memory per device (plans for CUDA devices)")
    p.add_argument("--local-world-size", type=int, default=None, help="ranks per host (default: 8 on GPU)")
    p.set_defaults(fn=_cmd_plan)


def _cmd_plan(args: argparse.Namespace) -> int:
    from compactrec.sharding.plan_report import make_plan
    from compactrec.trainer.config import load_config

    cfg = load_config(args.config, args.overrides)
    local = args.local_world_size or (min(8, args.world_size) if args.hbm_gb else args.world_size)
    print(make_plan(cfg, args.world_size, args.hbm_gb, local))
    return 0
