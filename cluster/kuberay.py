"""Render a KubeRay ``RayJob`` (ray.io/v1) from a cluster config and a job: a plain dict.

The RayJob creates a RayCluster shaped by ``configs/cluster/*.yaml`` (image, head pod,
worker groups, shared volume), submits the entrypoint with its runtime env once the cluster
is up (K8sJobMode: a Kubernetes Job runs ``ray job submit``), and deletes the cluster after
the job ends (``shutdownAfterJobFinishes``, ``ttlSecondsAfterFinished``).

Worker count: Ray Train places ``cluster.num_workers`` workers, each taking one GPU (GPU
runs) and ``cluster.cpus_per_worker`` CPUs. A pod of a worker group therefore holds
``worker_slots`` workers; a group whose ``replicas`` is unset gets just enough pods for the
run, and a cluster that cannot hold the run, or would leave a whole pod idle, is an error
naming both numbers (``plan_replicas``).

Example::

    manifest = render_rayjob(cc, run.cluster, name="compactrec-demo",
                             entrypoint="python -m compactrec train run.yaml", runtime_env={})
    print(to_yaml(manifest))  # kubectl apply -f -
"""

from __future__ import annotations

import math
import re
import secrets
from typing import Any, Dict, List, Optional

import yaml

from compactrec.cluster.cluster_config import KubeClusterConfig, WorkerGroupConfig
from compactrec.cluster.pod_patch import merge_patch
from compactrec.trainer.config import ClusterConfig, ConfigError

API_VERSION = "ray.io/v1"
MAX_NAME = 47  # KubeRay: a RayJob name <= 47 characters (it appends 6 for the RayCluster's)
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
HEAD_PORTS = [(6379, "gcs-server"), (8265, "dashboard"), (10001, "client")]
VOLUME = "compactrec-shared"
SHM_VOLUME = "dshm"


def job_name(text: str, unique: bool = False) -> str:
    """``text`` as a valid RayJob name: a DNS-1035 label of at most 47 characters; with
    ``unique``, ending in ``-`` and 5 random hex digits, so that a second submission of the
    same run is a new RayJob instead of a clash with the first (``kubectl apply`` would
    otherwise update the running one)."""
    room = MAX_NAME - (6 if unique else 0)
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-+", "-", name).lstrip("-0123456789")[:room].rstrip("-") or "compactrec"
    return f"{name}-{secrets.token_hex(3)[:5]}" if unique else name


def worker_slots(group: WorkerGroupConfig, run: ClusterConfig) -> int:
    """Ray Train workers one pod of ``group`` holds for this run."""
    by_cpu = group.cpu // max(run.cpus_per_worker, 1)
    return min(group.gpu, by_cpu) if run.use_gpu else by_cpu


def plan_replicas(cc: KubeClusterConfig, run: ClusterConfig, where: str) -> List[int]:
    """Pods per worker group so the cluster holds exactly the run's ``num_workers``.

    Raises:
        ConfigError: GPU settings disagree, or the pods hold too few workers or a whole idle pod.
    """
    groups = cc.worker_groups
    for g in groups:
        if g.gpu and not run.use_gpu:
            raise ConfigError(
                f"{where}: worker group '{g.name}' has {g.gpu} GPUs per pod but the run has "
                "cluster.use_gpu=false; set cluster.use_gpu=true"
            )
    if run.use_gpu and not any(g.gpu for g in groups):
        raise ConfigError(f"{where}: the run has cluster.use_gpu=true but no worker group has GPUs")
    slots = [worker_slots(g, run) for g in groups]
    for g, s in zip(groups, slots):
        if s == 0 and (g.replicas is None or g.replicas > 0):
            raise ConfigError(
                f"{where}: a pod of worker group '{g.name}' ({g.cpu} CPUs, {g.gpu} GPUs) holds no "
                f"worker of cluster.cpus_per_worker={run.cpus_per_worker}"
            )
    unset = [i for i, g in enumerate(groups) if g.replicas is None]
    if len(unset) > 1:
        raise ConfigError(f"{where}: at most one worker group may leave 'replicas' unset (to fit the run)")
    head = 0 if run.use_gpu else cc.head.num_cpus // max(run.cpus_per_worker, 1)
    replicas = [g.replicas or 0 for g in groups]
    if unset:
        i = unset[0]
        fixed = head + sum(r * s for r, s in zip(replicas, slots))
        replicas[i] = max(0, math.ceil((run.num_workers - fixed) / slots[i]))
    total = head + sum(r * s for r, s in zip(replicas, slots))
    shape = " + ".join(f"{r} x {s} ({g.name})" for g, r, s in zip(groups, replicas, slots))
    if head:
        shape += f" + {head} (head)"
    if total < run.num_workers:
        raise ConfigError(
            f"{where}: the cluster holds {total} Ray Train workers ({shape}) but the run asks for "
            f"cluster.num_workers={run.num_workers}; add replicas or lower cluster.num_workers"
        )
    used = [s for r, s in zip(replicas, slots) if r > 0]
    if used and total - run.num_workers >= min(used):
        raise ConfigError(
            f"{where}: the cluster holds {total} Ray Train workers ({shape}) but the run uses "
            f"cluster.num_workers={run.num_workers}, leaving whole pods idle; lower replicas or "
            f"set cluster.num_workers={total}"
        )
    for g, r in zip(groups, replicas):
        lo, hi = g.min_replicas, g.max_replicas
        if (lo is not None and r < lo) or (hi is not None and r > hi):
            raise ConfigError(f"{where}: worker group '{g.name}' needs {r} pods, outside min/max_replicas {lo}..{hi}")
    return replicas


def render_rayjob(
    cc: KubeClusterConfig,
    run: ClusterConfig,
    *,
    name: str,
    entrypoint: str,
    runtime_env: Dict[str, Any],
    metadata: Optional[Dict[str, str]] = None,
    image: Optional[str] = None,
    where: str = "cluster config",
) -> Dict[str, Any]:
    """The RayJob manifest as a plain dict (``to_yaml`` for the file); checked by ``check_rayjob``."""
    image = image or cc.image
    replicas = plan_replicas(cc, run, where)
    spec: Dict[str, Any] = {
        "entrypoint": entrypoint,
        "runtimeEnvYAML": to_yaml(runtime_env),
        "submissionMode": "K8sJobMode",
        "shutdownAfterJobFinishes": cc.shutdown_after_job_finishes,
        "ttlSecondsAfterFinished": cc.ttl_seconds_after_finished,
        "backoffLimit": cc.backoff_limit,
    }
    if cc.active_deadline_seconds is not None:
        spec["activeDeadlineSeconds"] = cc.active_deadline_seconds
    if metadata:
        spec["metadata"] = {k: str(v) for k, v in metadata.items()}
    if cc.image_pull_secrets:  # KubeRay's default submitter pod would pull the image without them
        spec["submitterPodTemplate"] = _submitter_pod(cc, image)
    head = {
        "rayStartParams": {"num-cpus": str(cc.head.num_cpus)},
        "template": _patched(
            _pod(cc, image, "ray-head", cc.head.cpu, cc.head.memory, gpu=0, gpu_resource="", ports=True, shm=cc.head.shm),
            cc.pod_patch, cc.head.pod_patch,
        ),
    }
    workers = []
    for g, r in zip(cc.worker_groups, replicas):
        workers.append({
            "groupName": g.name,
            "replicas": r,
            "minReplicas": r if g.min_replicas is None else g.min_replicas,
            "maxReplicas": r if g.max_replicas is None else g.max_replicas,
            "rayStartParams": {},  # CPUs and GPUs come from the container's limits
            "template": _patched(
                _pod(cc, image, "ray-worker", g.cpu, g.memory, g.gpu, g.gpu_resource, node_selector=g.node_selector, shm=g.shm),
                cc.pod_patch, g.pod_patch,
            ),
        })
    spec["rayClusterSpec"] = {
        "rayVersion": cc.ray_version,
        "enableInTreeAutoscaling": False,
        "headGroupSpec": head,
        "workerGroupSpecs": workers,
    }
    manifest = {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": {
            "name": name,
            "namespace": cc.namespace,
            "labels": {"app.kubernetes.io/name": "compactrec", "app.kubernetes.io/component": "training"},
        },
        "spec": spec,
    }
    check_rayjob(manifest)
    return manifest


def _pod(
    cc: KubeClusterConfig,
    image: str,
    container: str,
    cpu: int,
    memory: str,
    gpu: int,
    gpu_resource: str,
    ports: bool = False,
    node_selector: Optional[Dict[str, str]] = None,
    shm: str = "none",
) -> Dict[str, Any]:
    """A pod template with one Ray container; requests == limits (a Guaranteed pod)."""
    amount: Dict[str, Any] = {"cpu": str(cpu), "memory": str(memory)}
    limits = dict(amount, **({gpu_resource: gpu} if gpu else {}))
    c: Dict[str, Any] = {
        "name": container,
        "image": image,
        "imagePullPolicy": cc.image_pull_policy,
        "resources": {"requests": amount, "limits": limits},
    }
    if ports:
        c["ports"] = [{"containerPort": p, "name": n} for p, n in HEAD_PORTS]
    if cc.env:
        c["env"] = [{"name": k, "value": str(v)} for k, v in sorted(cc.env.items())]
    pod: Dict[str, Any] = {"containers": [c]}
    mounts: List[Dict[str, Any]] = []
    volumes: List[Dict[str, Any]] = []
    if cc.storage.claim:
        mounts.append({"name": VOLUME, "mountPath": cc.storage.mount_path})
        volumes.append({"name": VOLUME, "persistentVolumeClaim": {"claimName": cc.storage.claim}})
    shm_volume = shm_volume_source(shm, gpu)
    if shm_volume is not None:
        mounts.append({"name": SHM_VOLUME, "mountPath": "/dev/shm"})
        volumes.append({"name": SHM_VOLUME, "emptyDir": shm_volume})
    if mounts:
        c["volumeMounts"], pod["volumes"] = mounts, volumes
    if cc.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s} for s in cc.image_pull_secrets]
    if cc.service_account:
        pod["serviceAccountName"] = cc.service_account
    if node_selector:
        pod["nodeSelector"] = dict(node_selector)
    if gpu:  # GPU nodes are usually tainted so that only GPU pods land there
        pod["tolerations"] = [{"key": gpu_resource, "operator": "Exists", "effect": "NoSchedule"}]
    return {"spec": pod}


def shm_volume_source(shm: str, gpu: int) -> Optional[Dict[str, Any]]:
    """The ``emptyDir`` behind ``/dev/shm``, or None. A container's own /dev/shm is 64 MB;
    NCCL keeps its intra-node buffers there, so 8-GPU pods fail or crawl without a bigger
    one. ``medium: Memory`` counts against the pod's memory limit, which bounds it."""
    if shm == "none" or (shm == "auto" and not gpu):
        return None
    return {"medium": "Memory"} if shm == "auto" else {"medium": "Memory", "sizeLimit": shm}


def _patched(template: Dict[str, Any], *patches: Dict[str, Any]) -> Dict[str, Any]:
    """The pod template with the cluster config's ``pod_patch`` sections merged in, in order."""
    for patch in patches:
        if patch:
            template = merge_patch(template, patch)
    return template


def _submitter_pod(cc: KubeClusterConfig, image: str) -> Dict[str, Any]:
    """The pod that runs ``ray job submit`` (K8sJobMode). KubeRay fills in its command when
    the container has none; it is rendered only to carry the image pull secrets."""
    amount = {"cpu": "1", "memory": "1Gi"}
    return {"spec": {
        "restartPolicy": "Never",
        "imagePullSecrets": [{"name": s} for s in cc.image_pull_secrets],
        "containers": [{"name": "ray-job-submitter", "image": image, "imagePullPolicy": cc.image_pull_policy,
                        "resources": {"requests": amount, "limits": amount}}],
    }}


def check_rayjob(manifest: Dict[str, Any]) -> None:
    """KubeRay's own checks (``ValidateRayJobMetadata``/``ValidateRayJobSpec``/``ValidateRayClusterSpec``
    in ray-operator's validation.go), which the CRD schema does not express.

    Raises:
        ValueError: listing every problem.
    """
    problems = []
    name = manifest.get("metadata", {}).get("name", "")
    if len(name) > MAX_NAME or not DNS1035_LABEL.match(name):
        problems.append(f"metadata.name {name!r}: expected a DNS-1035 label of at most {MAX_NAME} characters")
    spec = manifest.get("spec", {})
    ttl = spec.get("ttlSecondsAfterFinished", 0)
    if ttl < 0 or (ttl > 0 and not spec.get("shutdownAfterJobFinishes", False)):
        problems.append("spec.ttlSecondsAfterFinished: must be >= 0, and 0 unless shutdownAfterJobFinishes")
    if spec.get("activeDeadlineSeconds", 1) <= 0 or spec.get("backoffLimit", 0) < 0:
        problems.append("spec.activeDeadlineSeconds must be > 0 and spec.backoffLimit >= 0")
    if not str(spec.get("entrypoint", "")).strip():
        problems.append("spec.entrypoint: empty")
    try:
        env = yaml.safe_load(spec.get("runtimeEnvYAML", "") or "{}")
        if not isinstance(env, dict):
            problems.append("spec.runtimeEnvYAML: not a YAML mapping")
    except yaml.YAMLError as e:
        problems.append(f"spec.runtimeEnvYAML: not valid YAML: {e}")
    rc = spec.get("rayClusterSpec", {})
    if not rc.get("headGroupSpec", {}).get("template", {}).get("spec", {}).get("containers"):
        problems.append("headGroupSpec: no container")
    autoscaling = rc.get("enableInTreeAutoscaling", False)
    for g in rc.get("workerGroupSpecs", []):
        gname = g.get("groupName")
        if not g.get("template", {}).get("spec", {}).get("containers"):
            problems.append(f"worker group {gname}: no container")
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", 0)
        if not autoscaling and (lo is None or hi is None):
            problems.append(f"worker group {gname}: minReplicas and maxReplicas must be set without autoscaling")
        elif lo is not None and hi is not None and not (0 <= lo <= n <= hi):
            problems.append(f"worker group {gname}: expected 0 <= minReplicas <= replicas <= maxReplicas")
    if problems:
        raise ValueError("RayJob manifest rejected by KubeRay's checks: " + "; ".join(problems))


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings (the runtime env, the shipped config) as readable ``|`` blocks."""


def _str(dumper: yaml.SafeDumper, s: str) -> yaml.Node:
    style = "|" if "\n" in s else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style=style)


_BlockDumper.add_representer(str, _str)


def to_yaml(obj: Any) -> str:
    """YAML for a manifest or a runtime env: keys in insertion order, text blocks kept readable."""
    return yaml.dump(obj, Dumper=_BlockDumper, sort_keys=False, default_flow_style=False, width=4096)
