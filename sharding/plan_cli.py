"""``compactrec plan``: its arguments (imported when the parser is built: no torch here) and
its handler, which loads ``plan_report`` (torch, TorchRec) only when the command runs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Print the sharding plan of a run for N ranks, without training: per table its sharding
type, its ranks and the bytes on each; then per rank, with the state every rank replicates.
The model is built on the meta device, so a Criteo-TB plan needs no memory for its tables.

The job's shape: --world-size, --hosts and --gpus-per-host, or --cluster-config
configs/cluster/X.yaml (replicas x GPUs of its worker group); the batch per rank is the
run's data.batch_size. Then a per-rank table (bytes, tables, sharding types, TorchRec's
estimated lookup and all_to_all cost) and the headroom; when the tables do not fit, one
paragraph with the smallest world size that would.

examples:
  compactrec plan configs/criteo_tb_cafe.yaml --world-size 64 --hbm-gb 80
  compactrec plan configs/criteo_tb_cafe.yaml --cluster-config configs/cluster/gpu-8xh100.yaml --hbm-gb 80
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser("plan", help="print the sharding plan for N ranks without training",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--world-size", type=int, default=None,
                   help="ranks in all (default: --hosts x --gpus-per-host, or the cluster config's)")
    p.add_argument("--hosts", type=int, default=None, help="hosts (nodes) of the job")
    p.add_argument("--gpus-per-host", "--local-world-size", dest="local_world_size", type=int, default=None,
                   help="ranks per host (default: the cluster config's GPUs per worker pod; else 8 on GPU, all on CPU)")
    p.add_argument("--cluster-config", default=None,
                   help="configs/cluster/*.yaml: hosts x GPUs per host from its first worker group")
    p.add_argument("--hbm-gb", type=float, default=None, help="memory per device (plans for CUDA devices)")
    p.set_defaults(fn=_cmd_plan)


def job_shape(args: argparse.Namespace) -> "tuple[int, int]":
    """(world size, ranks per host) from the flags and the cluster config; a clear error
    (SystemExit via argparse's style) when they disagree or say nothing."""
    hosts, local, world = args.hosts, args.local_world_size, args.world_size
    if args.cluster_config:
        from compactrec.cluster.cluster_config import load_cluster_config

        group = load_cluster_config(args.cluster_config).worker_groups[0]
        local = local or (group.gpu or None)
        hosts = hosts or group.replicas
    if world is None:
        if not (hosts and local):
            raise SystemExit("compactrec plan: give --world-size, or --hosts and --gpus-per-host, "
                             "or a --cluster-config whose worker group has replicas and gpu")
        world = hosts * local
    local = local or (world // hosts if hosts else min(8, world) if args.hbm_gb else world)
    if world % local or (hosts and hosts * local != world):
        raise SystemExit(f"compactrec plan: {world} ranks are not {hosts or '?'} hosts x {local} ranks per host")
    return world, local


def _cmd_plan(args: argparse.Namespace) -> int:
    import sys

    from compactrec.sharding.plan_report import PlanDoesNotFit, make_plan
    from compactrec.trainer.config import load_config

    world, local = job_shape(args)
    cfg = load_config(args.config, args.overrides)
    try:
        print(make_plan(cfg, world, args.hbm_gb, local))
    except PlanDoesNotFit as err:
        print(f"compactrec plan: {err}", file=sys.stderr)
        return 2
    return 0
