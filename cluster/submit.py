"""``compactrec submit``: run a config on a Ray cluster (Jobs API) or render a KubeRay RayJob.

    compactrec submit CONFIG --address http://HEAD:8265 [key=value ...] [--follow]
    compactrec submit CONFIG --k8s --cluster-config configs/cluster/cpu.yaml [key=value ...] [-o job.yaml]

The job carries what it needs, so the cluster's Python needs CompactRec's dependencies
(torch, torchrec, fbgemm-gpu, ray) but not CompactRec itself:

- the code (Jobs API): the project laid out as its wheel installs it (``compactrec/``, the
  folders mapped by setup.py), in the runtime env's ``py_modules``. Ray puts it first on
  the PYTHONPATH of the job and of every worker, ahead of any installed copy. The wheel is
  built here and unpacked, not shipped as a ``.whl``: Ray installs a py_modules wheel with
  ``pip install --target``, which ignores what is installed and would pull every
  dependency (a CUDA torch included) into the job's folder. With ``--k8s`` the image built
  from cluster/Dockerfile carries the code.
- the run: the config with the overrides applied, resolved to one YAML, in the runtime
  env's variable ``COMPACTREC_RUN_CONFIG``. The entrypoint is this module's other half,
  ``python -m compactrec.cluster.submit``: on the cluster it prints which copy of
  compactrec it imported, then trains that run as ``compactrec train`` does. (One plain
  command: KubeRay pastes the entrypoint into a shell line after ``ray job submit --``,
  where ``&&`` or ``|`` would run in the submitter pod instead of the job.)

Paths on a cluster: ``data.path`` and ``runs_dir`` are read on the cluster's nodes, not on
this machine. Every node that runs a worker must see the data there: a URI that every node
can read (``s3://``, ``gs://``, ``hdfs://``: read through pyarrow's filesystems), or a
path on a volume mounted at the same place on every node (e.g. the cluster config's
``storage``). URIs and absolute paths pass unchanged; relative paths are joined to
``--remote-dir`` (default: ``storage.mount_path`` with ``--k8s`` and a claim, else
``/tmp/compactrec``, which suits a one-node cluster). ``runs_dir`` must be a path (runs
are written with local file APIs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import posixpath
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from omegaconf import OmegaConf

from compactrec.trainer.config import ConfigError, RunConfig, load_config

CONFIG_ENV = "COMPACTREC_RUN_CONFIG"
DEFAULT_REMOTE_DIR = "/tmp/compactrec"
ENTRYPOINT = "python -m compactrec.cluster.submit"  # runs ``run_shipped`` on the cluster
_TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
_SOURCE_FILES = ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md")


# ---------------------------------------------------------------------------- the job


def cluster_run_config(cfg: RunConfig, remote_dir: str) -> RunConfig:
    """The run as the cluster sees it: cluster paths, and Ray reached from inside the job."""
    if not remote_dir.startswith("/"):
        raise ConfigError(f"--remote-dir {remote_dir!r}: expected an absolute path on the cluster")
    data = replace(cfg.data, path=_cluster_path(cfg.data.path, remote_dir))
    if "://" in cfg.runs_dir:
        raise ConfigError(f"runs_dir '{cfg.runs_dir}': expected a path (runs are written with local file APIs)")
    runs_dir = _cluster_path(cfg.runs_dir, remote_dir)
    # Inside a job RAY_ADDRESS names the cluster: join it rather than start a local one.
    return replace(cfg, data=data, runs_dir=runs_dir, cluster=replace(cfg.cluster, address="auto"))


def _cluster_path(path: str, remote_dir: str) -> str:
    if "://" in path or posixpath.isabs(path):
        return path
    return posixpath.normpath(posixpath.join(remote_dir, path))


def job_spec(cfg: RunConfig, code_dir: Optional[Path]) -> Tuple[str, Dict[str, Any]]:
    """(entrypoint, runtime_env) for a run already passed through ``cluster_run_config``."""
    runtime_env: Dict[str, Any] = {"env_vars": {CONFIG_ENV: OmegaConf.to_yaml(OmegaConf.structured(cfg))}}
    if code_dir is not None:
        runtime_env["py_modules"] = [str(code_dir)]
    return ENTRYPOINT, runtime_env


def stage_code(dest: Path) -> Path:
    """``dest/site/compactrec``: this project as an installed wheel lays it out.

    From a source checkout (an editable install) the wheel is built from a copy of the
    sources, so nothing is written into the checkout; from a regular install the installed
    package already has that layout and is copied.
    """
    import compactrec

    package = Path(compactrec.__file__).resolve().parent
    root, site = package.parent, dest / "site"
    if (root / "setup.py").exists() or (root / "pyproject.toml").exists():
        with zipfile.ZipFile(_build_wheel(root, dest)) as whl:
            whl.extractall(site)
    else:
        shutil.copytree(package, site / "compactrec", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    if not (site / "compactrec" / "cluster" / "submit.py").exists():
        raise RuntimeError(f"staging the code for the job: {site / 'compactrec'} lacks compactrec.cluster")
    return site / "compactrec"


def _build_wheel(root: Path, dest: Path) -> Path:
    """A wheel built with setuptools' build API from a copy of ``root`` (its packages only)."""
    src, out = dest / "src", dest / "wheel"
    src.mkdir(parents=True)
    for name in _SOURCE_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, src / name)
    for d in root.iterdir():
        if d.is_dir() and (d / "__init__.py").exists():
            shutil.copytree(d, src / d.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    code = "import sys; from setuptools import build_meta as b; print(b.build_wheel(sys.argv[1]))"
    r = subprocess.run([sys.executable, "-c", code, str(out)], cwd=src, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"building the project's wheel in {src} failed:\n{r.stderr[-2000:]}")
    return out / r.stdout.strip().splitlines()[-1]


# ---------------------------------------------------------------------------- Jobs API


def _client(address: str) -> Any:
    """A Jobs API client for exactly ``address``: Ray's SDK lets ``RAY_ADDRESS`` override the
    address it is given (inside a Ray job, or with RAY_ADDRESS=local, ``--address`` would be
    ignored), unless ``RAY_API_SERVER_ADDRESS`` names the server; it is set for the call."""
    from ray.job_submission import JobSubmissionClient

    saved = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        return JobSubmissionClient(address)
    finally:
        if saved is None:
            del os.environ["RAY_API_SERVER_ADDRESS"]
        else:
            os.environ["RAY_API_SERVER_ADDRESS"] = saved


def submit_job(address: str, entrypoint: str, runtime_env: Dict[str, Any], job_id: str, metadata: Dict[str, str]) -> str:
    try:
        client = _client(address)
        return client.submit_job(entrypoint=entrypoint, runtime_env=runtime_env, submission_id=job_id, metadata=metadata)
    except OSError as e:  # ConnectionError, requests errors
        raise RuntimeError(f"cannot reach the Ray dashboard at {address}: {e}") from e


def follow_job(address: str, job_id: str, timeout_s: float = 60.0) -> str:
    """Stream the job's log to stdout until it ends; its final status."""
    client = _client(address)

    async def _tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(_tail())
    deadline = time.monotonic() + timeout_s  # the log can close a moment before the status settles
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in _TERMINAL or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


# ---------------------------------------------------------------------------- CLI


class _TrailingOverrides:
    """Lets ``key=value`` overrides follow options (``submit CONFIG --address X a=1``):
    argparse fills a ``*`` positional before the options and would reject the rest."""

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        ns, rest = super().parse_known_args(args, namespace)  # type: ignore[misc]
        extra = [a for a in rest if "=" in a and not a.startswith("-")]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + extra
        return ns, [a for a in rest if a not in extra]


DESCRIPTION = """\
Run a config on a Ray cluster through the Jobs API (the project's code travels with the job,
so the cluster needs CompactRec's dependencies but not CompactRec), or render a KubeRay
RayJob manifest for kubectl apply.

Paths in the config are read on the cluster: data.path must be a URI every node can read
(s3://, gs://, hdfs://) or a path on a volume mounted on every node; relative paths are
joined to --remote-dir (default: the cluster config's storage.mount_path with --k8s and a
claim, else /tmp/compactrec).

examples:
  compactrec submit configs/methods/full.yaml --address http://HEAD:8265 --follow
  compactrec submit configs/methods/full.yaml --k8s --cluster-config configs/cluster/cpu.yaml -o job.yaml
"""


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Register ``submit`` (handler ``args.fn(args) -> exit code``)."""
    p = subparsers.add_parser(
        "submit",
        help="run a config on a Ray cluster, or render a KubeRay RayJob",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.__class__ = type("SubmitParser", (_TrailingOverrides, type(p)), {})
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--address", default=None, help="Ray dashboard, http://HEAD:8265 (default: cluster.address, then RAY_ADDRESS)")
    p.add_argument("--follow", action="store_true", help="stream the job's log until it ends; exit 1 unless it succeeded")
    p.add_argument("--name", default=None, help="job name, used as given (default: compactrec-RUN-xxxxx, unique)")
    p.add_argument("--remote-dir", default=None, help="cluster directory for relative data.path / runs_dir")
    k = p.add_argument_group("Kubernetes")
    k.add_argument("--k8s", action="store_true", help="render a KubeRay RayJob manifest instead of submitting")
    k.add_argument("--cluster-config", default=None, help="configs/cluster/<x>.yaml (required with --k8s)")
    k.add_argument("--output", "-o", default="-", help="manifest file (default: stdout)")
    k.add_argument("--image", default=None, help="container image (default: the cluster config's)")
    p.set_defaults(fn=run_submit)
    return p


def run_submit(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.sweep:
        raise ConfigError(f"{args.config}: declares a sweep; submit one point of it with overrides")
    if args.k8s:
        return _render(args, cfg)
    if args.cluster_config or args.image or args.output != "-":
        raise ConfigError("--cluster-config, --image and --output go with --k8s")
    return _submit(args, cfg)


def _submit(args: argparse.Namespace, cfg: RunConfig) -> int:
    address = args.address or cfg.cluster.address or os.environ.get("RAY_ADDRESS", "")
    if not address:
        raise ConfigError("no Ray cluster: pass --address http://HEAD:8265, or set cluster.address or RAY_ADDRESS")
    shipped = cluster_run_config(cfg, args.remote_dir or DEFAULT_REMOTE_DIR)
    _say(f"on the cluster: data.path={shipped.data.path} runs_dir={shipped.runs_dir}")
    job_id = f"{_job_prefix(args, cfg)}-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="compactrec-submit-") as tmp:
        entrypoint, runtime_env = job_spec(shipped, stage_code(Path(tmp)))
        job_id = submit_job(address, entrypoint, runtime_env, job_id, _metadata(args, cfg))
    print(f"submitted job {job_id} to {address}", flush=True)
    if not args.follow:
        print(f"  logs:   ray job logs --address {address} --follow {job_id}")
        print(f"  status: ray job status --address {address} {job_id}")
        return 0
    status = follow_job(address, job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def _render(args: argparse.Namespace, cfg: RunConfig) -> int:
    from compactrec.cluster.cluster_config import load_cluster_config
    from compactrec.cluster.kuberay import job_name, render_rayjob, to_yaml

    if args.follow:
        raise ConfigError("--follow needs a running cluster; with --k8s use kubectl logs -f job/<name>")
    if not args.cluster_config:
        raise ConfigError("--k8s needs --cluster-config configs/cluster/<x>.yaml")
    cc = load_cluster_config(args.cluster_config)
    remote = args.remote_dir or (cc.storage.mount_path if cc.storage.claim else DEFAULT_REMOTE_DIR)
    shipped = cluster_run_config(cfg, remote)
    entrypoint, runtime_env = job_spec(shipped, code_dir=None)  # the image carries the code
    manifest = render_rayjob(
        cc, shipped.cluster, name=job_name(_job_prefix(args, cfg), unique=not args.name), entrypoint=entrypoint,
        runtime_env=runtime_env, metadata=_metadata(args, cfg), image=args.image, where=args.cluster_config,
    )
    text = to_yaml(manifest)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        from compactrec.io import atomic_write_text

        atomic_write_text(args.output, text)
        _say(f"wrote {args.output}: kubectl apply -f {args.output}")
    return 0


def _job_prefix(args: argparse.Namespace, cfg: RunConfig) -> str:
    return args.name or f"compactrec-{cfg.name}"


def _metadata(args: argparse.Namespace, cfg: RunConfig) -> Dict[str, str]:
    """Labels for the job: the config's file name, not its path on this machine (the job
    carries the whole config; a local path means nothing on the cluster and leaks ours)."""
    return {"compactrec_config": Path(args.config).name, "compactrec_overrides": " ".join(args.overrides), "run": cfg.name}


def _say(msg: str) -> None:
    print(f"compactrec submit: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- on the cluster


def run_shipped() -> int:
    """The job's entrypoint: train the run shipped in ``$COMPACTREC_RUN_CONFIG``.

    The first line of the job's log names the copy of compactrec this process imported
    (the shipped one under Ray's runtime_resources, or the image's on Kubernetes).
    """
    import compactrec
    from compactrec.cli import main

    print(f"compactrec: code from {compactrec.__file__}", flush=True)
    text = os.environ.get(CONFIG_ENV)
    if not text:
        print(f"compactrec job: error: ${CONFIG_ENV} is empty; submit with `compactrec submit`", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="compactrec-job-") as tmp:
        path = Path(tmp) / "shipped-run.yaml"
        path.write_text(text)
        return main(["train", str(path)])


if __name__ == "__main__":
    sys.exit(run_shipped())

